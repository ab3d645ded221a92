"""A stand-in for boto3 on the GPU machines (no boto3 there: its wheels do not fit the carry with the others).

Torch-free on purpose: Ray workers import it in their setup hook, before Ray pins them to a GPU, and a
`torch.cuda.is_available()` there would start CUDA with every GPU visible.
"""

from __future__ import annotations

import sys


def stub_boto3_if_missing() -> str:
    """The GPU image has no boto3 (its wheels do not fit the 64 MiB carry with the others) and
    `cluster.worker` imports `cluster.storage`, which imports it. These jobs use local paths only, so a stub
    with the names `cluster.storage` binds at import stands in; any S3 call would fail loudly."""
    import importlib.util
    import types

    if importlib.util.find_spec("boto3") is not None:
        return "installed"

    class BotoCoreError(Exception):
        pass

    class ClientError(Exception):
        pass

    def unavailable(*args, **kwargs):
        raise RuntimeError("boto3 is stubbed in this benchmark (not on the GPU image)")

    modules = {
        "boto3": {"session": types.SimpleNamespace(Session=unavailable)},
        "boto3.s3": {},
        "boto3.s3.transfer": {"TransferConfig": unavailable},
        "botocore": {},
        "botocore.config": {"Config": unavailable},
        "botocore.exceptions": {"BotoCoreError": BotoCoreError, "ClientError": ClientError},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    sys.modules["boto3"].s3 = sys.modules["boto3.s3"]
    sys.modules["boto3.s3"].transfer = sys.modules["boto3.s3.transfer"]
    sys.modules["botocore"].config = sys.modules["botocore.config"]
    sys.modules["botocore"].exceptions = sys.modules["botocore.exceptions"]
    return "stub (not on the GPU image; no S3 in these jobs)"
