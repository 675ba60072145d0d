pytest_plugins = ["styldod_batch.sandbox.pytest_plugin"]
