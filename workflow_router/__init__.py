"""``workflow-router``: the project's one command line (the ext_proc server, the A2A service, the Envoy config
generator, the local stack, the simulator and the benchmarks). It sits outside the product packages because it
also runs the benchmarks and the simulator, which the product never imports."""
