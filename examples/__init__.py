"""Runnable examples: the gateway called from the OpenAI SDK, LangChain and AutoGen.

Each module runs as ``python -m examples.<name> --base-url http://127.0.0.1:8001`` against a running
stack (``make run``), prints what happened and exits non-zero if the workflow did not behave (its requests
spread over several instances, or no prompt tokens came from the prefix cache). See docs/clients.md.
"""
