"""Model sets named by a manifest and resolved by every node into its own cache.

On a cluster the nodes share nothing but the network, so the head cannot hand its local paths to workers on
other machines. It reads a manifest instead (`ltx2-models.json`: every file of a `CheckpointSet` with its
source URL, byte size and SHA-256) and hands that over; each worker resolves it into its node's cache,
downloading what is missing from `s3://` or from a Hugging Face Hub repo (through huggingface_hub's own
download and cache), and checks every file against the pins the head read: an object changed in the bucket
since the manifest was written is refused, not rendered.

The node cache (LTX2_FARM_MODEL_CACHE, else `<farm cache>/models`):

    blobs/<sha256>        s3:// contents, named by their pinned digest (shared by every set that pins them)
    locks/<sha256>.lock   one lock per blob
    huggingface/          huggingface_hub's cache (hf:// files)
    sets/<set id>/<path>  the set laid out as ltx-core reads it: links to the verified files

A download goes to a temporary name beside its blob, is verified, then renamed: no reader ever sees a
partial file. A lock per blob makes a second process of the node wait for the first one's download instead
of fetching the same 20 GB again.

It lives beside `cluster.storage` (whose S3 client it uses) rather than in `ltx2/`, which knows nothing of
buckets or hubs: the model layer receives the resolved local `CheckpointSet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ltx2.checkpoint import (
    LTX_SECTIONS,
    CheckpointError,
    CheckpointSet,
    cached_file_sha256,
    config_problems,
    distilled_by_name,
    file_sha256,
    ltx_config_bounds,
    read_config_metadata,
    remember_file_sha256,
    summarize,
    validate_checkpoint_set,
)

SCHEMA = "ltx2-farm/models/1"
MANIFEST_NAME = "ltx2-models.json"
CONFIG_SECTIONS = LTX_SECTIONS
GEMMA_REQUIRED = ("config.json", "tokenizer.model", "preprocessor_config.json")
SINGLE_FILES = ("checkpoint", "spatial_upsampler", "distilled_lora")
"""The roles of a set held in one file each (the distilled LoRA: not with a distilled checkpoint)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPUBLISH = "publish the set again with `ltx2-farm models publish`, or restore the files the manifest pins"


class ModelFetchError(CheckpointError):
    """A model file that could not be fetched, or whose content is not the one the manifest pins."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a set: where it sits in the set, where it comes from, and its pins."""

    path: str
    """POSIX path inside the set, e.g. `ltx-2-19b-dev.safetensors` or `gemma-3-12b-it/config.json`."""
    url: str
    """`s3://bucket/key`, `hf://org/repo/path/in/repo@revision`, or an absolute local path."""
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSet:
    """The four roles of a `CheckpointSet` as pinned files (the manifest, once read and checked)."""

    checkpoint: ModelFile
    gemma_root: str
    """The Gemma folder's path inside the set; every `gemma` file lies under it."""
    gemma: tuple[ModelFile, ...]
    spatial_upsampler: ModelFile
    distilled_lora: ModelFile | None
    """None with a distilled checkpoint (`ltx2.checkpoint.CheckpointSet.distilled_lora`)."""
    checkpoint_config: str
    """The checkpoint's `config` metadata (JSON) read at publish time: the head validates jobs against it
    without the checkpoint itself; workers check it against the file they fetched."""
    source: str = field(default="", compare=False)
    """Where the manifest was read from (for messages)."""

    def files(self) -> tuple[ModelFile, ...]:
        lora = (self.distilled_lora,) if self.distilled_lora is not None else ()
        return (self.checkpoint, *self.gemma, self.spatial_upsampler, *lora)

    @property
    def config(self) -> dict:
        return json.loads(self.checkpoint_config)

    def set_id(self) -> str:
        """The cache folder name of this set: a digest of its layout and pins (not of the URLs: the same files
        mirrored elsewhere are the same set)."""
        pins = sorted((f.path, f.size, f.sha256) for f in self.files())
        return hashlib.sha256(json.dumps(pins).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        def entry(f: ModelFile) -> dict[str, Any]:
            return {"path": f.path, "url": f.url, "size": f.size, "sha256": f.sha256}

        data = {
            "schema": SCHEMA,
            "checkpoint": entry(self.checkpoint),
            "gemma_root": self.gemma_root,
            "gemma": [entry(f) for f in self.gemma],
            "spatial_upsampler": entry(self.spatial_upsampler),
            "checkpoint_config": json.loads(self.checkpoint_config),
        }
        if self.distilled_lora is not None:
            data["distilled_lora"] = entry(self.distilled_lora)
        return data


@dataclass(frozen=True)
class PullResult:
    """A set resolved on this node: its local paths, and what had to be fetched for it."""

    checkpoints: CheckpointSet
    downloaded: tuple[str, ...]
    reused: tuple[str, ...]
    bytes_downloaded: int
    seconds: float


ModelSource = CheckpointSet | ModelSet
"""What the head hands to workers: local paths (one machine) or a manifest (every node resolves it)."""


def model_cache_dir() -> Path:
    """This node's model cache: LTX2_FARM_MODEL_CACHE, else `models/` in the farm's cache folder."""
    from ltx2.checkpoint import default_cache_dir

    return Path(os.environ.get("LTX2_FARM_MODEL_CACHE") or default_cache_dir() / "models")


def local_checkpoint_set(models: ModelSource, cache_dir: Path | None = None) -> CheckpointSet:
    """The set as files on this node: local paths as given, a manifest resolved into the node's cache."""
    if isinstance(models, CheckpointSet):
        return models
    return pull_model_set(models, cache_dir).checkpoints


def distilled_checkpoint(models: ModelSource) -> str | None:
    """The set's checkpoint file name when it is a distilled one (`ltx2.checkpoint.CheckpointVariant`), else None:
    read from the name, which a manifest keeps, so the head knows it without the file."""
    name = (
        Path(models.checkpoint).name
        if isinstance(models, CheckpointSet)
        else PurePosixPath(models.checkpoint.path).name
    )
    return name if distilled_by_name(name) else None


def validate_models(models: ModelSource) -> dict:
    """The checkpoint's config, checked before any worker starts. A local set is checked file by file; a
    manifest by what it records (its shape was checked when read; each worker verifies every file it
    fetches against the pins and checks the set again before loading it)."""
    if isinstance(models, CheckpointSet):
        return validate_checkpoint_set(models)
    return models.config


# --- manifests ---------------------------------------------------------------------------------------------


def manifest_location(source: str) -> str:
    """The manifest a SOURCE names: itself when it ends in .json, else `ltx2-models.json` under it."""
    if source.endswith(".json"):
        return source
    if source.startswith("s3://"):
        return source.rstrip("/") + "/" + MANIFEST_NAME
    return str(Path(source) / MANIFEST_NAME)


def read_model_set(source: str, options: Any = None) -> ModelSet:
    """Read and check a manifest: an `s3://` URL (of the manifest or of the prefix holding it) or a local path."""
    location = manifest_location(source)
    if location.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        from cluster.storage import _redact, s3_client
        from jobs.keys import parse_destination

        where = parse_destination(location)
        try:
            body = s3_client(options or _default_options()).get_object(Bucket=where.bucket, Key=where.prefix)
            text = body["Body"].read().decode()
        except ClientError as error:
            fix = "publish the set with `ltx2-farm models publish`"
            raise ModelFetchError(location, _client_error(error), fix) from None
        except (BotoCoreError, OSError, UnicodeDecodeError) as error:
            raise ModelFetchError(location, f"{type(error).__name__}: {_redact(error)}") from None
    else:
        try:
            text = Path(location).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ModelFetchError(location, f"cannot read the manifest ({type(error).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _not_a_manifest(location, f"not JSON ({error.msg})") from None
    return parse_model_set(data, location)


def parse_model_set(data: Any, source: str) -> ModelSet:
    """The manifest `data` checked for shape; relative URLs are resolved against `source`'s location."""
    if not isinstance(data, dict):
        raise _not_a_manifest(source, "not a JSON object")
    if data.get("schema") != SCHEMA:
        raise _not_a_manifest(source, f"schema {data.get('schema')!r}, expected {SCHEMA!r}")

    def one(value: Any, where: str) -> ModelFile:
        if not isinstance(value, dict):
            raise _not_a_manifest(source, f"{where} is not an object")
        path, url, size, sha = (value.get(k) for k in ("path", "url", "size", "sha256"))
        pure = PurePosixPath(path) if isinstance(path, str) else None
        if pure is None or not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
            raise _not_a_manifest(source, f"{where}.path {path!r} is not a relative path inside the set")
        if not isinstance(url, str) or not url:
            raise _not_a_manifest(source, f"{where}.url missing")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _not_a_manifest(source, f"{where}.size {size!r} is not a byte count")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise _not_a_manifest(source, f"{where}.sha256 {sha!r} is not a lowercase hex SHA-256")
        return ModelFile(str(pure), _absolute_url(url, source), size, sha)

    gemma_root = data.get("gemma_root")
    root = PurePosixPath(gemma_root) if isinstance(gemma_root, str) and gemma_root else None
    if root is None or root.is_absolute() or ".." in root.parts:
        raise _not_a_manifest(source, f"gemma_root {gemma_root!r} is not a relative folder")
    gemma_list = data.get("gemma")
    if not isinstance(gemma_list, list) or not gemma_list:
        raise _not_a_manifest(source, "gemma is not a non-empty list of files")
    gemma = tuple(one(v, f"gemma[{i}]") for i, v in enumerate(gemma_list))
    roles = {role: one(data.get(role), role) for role in ("checkpoint", "spatial_upsampler")}
    lora = data.get("distilled_lora")  # absent for a distilled checkpoint's set
    if lora is None and not distilled_by_name(roles["checkpoint"].path):
        raise _not_a_manifest(source, "distilled_lora missing: a dev checkpoint's recipes fuse the distilled LoRA")
    config = data.get("checkpoint_config")
    if not isinstance(config, dict):
        raise _not_a_manifest(source, "checkpoint_config (the checkpoint's config metadata) missing")
    missing = [s for s in CONFIG_SECTIONS if s not in config]
    if missing:
        raise _not_a_manifest(source, f"checkpoint_config lacks {', '.join(missing)}: not an LTX-2 audio-video set")
    problems = config_problems(config, ltx_config_bounds(config), CONFIG_SECTIONS)
    if problems:  # the head sizes jobs by it (layers, heads) without the checkpoint: the same bounds
        raise _not_a_manifest(source, f"checkpoint_config: {summarize(problems)}")
    model_set = ModelSet(
        checkpoint=roles["checkpoint"],
        gemma_root=gemma_root,
        gemma=gemma,
        spatial_upsampler=roles["spatial_upsampler"],
        distilled_lora=None if lora is None else one(lora, "distilled_lora"),
        checkpoint_config=json.dumps(config, sort_keys=True),
        source=source,
    )
    _check_layout(model_set)
    return model_set


def _check_layout(models: ModelSet) -> None:
    root = PurePosixPath(models.gemma_root)
    paths = [f.path for f in models.files()]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise _not_a_manifest(models.source, f"two files at {duplicates[0]!r}")
    outside = [f.path for f in models.gemma if root not in PurePosixPath(f.path).parents]
    if outside:
        raise _not_a_manifest(models.source, f"gemma file {outside[0]!r} is not under gemma_root {models.gemma_root!r}")
    names = {PurePosixPath(f.path).relative_to(root).as_posix() for f in models.gemma}
    lacking = [n for n in GEMMA_REQUIRED if n not in names]
    if not any(PurePosixPath(n).name.startswith("model") and n.endswith(".safetensors") for n in names):
        lacking.append("model*.safetensors")
    if lacking:
        raise _not_a_manifest(models.source, f"the Gemma folder lacks {', '.join(lacking)}")


def _not_a_manifest(source: str, problem: str) -> CheckpointError:
    return CheckpointError(
        source, f"not a model-set manifest: {problem}", f"write it with `ltx2-farm models publish` (schema {SCHEMA})"
    )


def _absolute_url(url: str, source: str) -> str:
    """A relative URL names a file beside the manifest (a mirror stays valid when its prefix moves)."""
    if url.startswith(("s3://", "hf://")) or Path(url).is_absolute():
        return url
    if source.startswith("s3://"):
        return source.rsplit("/", 1)[0] + "/" + url
    return str((Path(source).parent / url).resolve())


def build_model_set(checkpoints: CheckpointSet, url_for: Callable[[str], str]) -> ModelSet:
    """The manifest of a local set (checked first), pins computed here; `url_for(path in set)` says where each
    file will be fetched from (e.g. `lambda p: f"hf://Lightricks/LTX-2/{p}@<commit>"`)."""
    config = validate_checkpoint_set(checkpoints)
    gemma_dir = Path(checkpoints.gemma_root)

    def pinned(local: Path, path: str) -> ModelFile:
        return ModelFile(path, url_for(path), local.stat().st_size, cached_file_sha256(local))

    gemma = tuple(
        pinned(p, f"{gemma_dir.name}/{p.relative_to(gemma_dir).as_posix()}")
        for p in sorted(gemma_dir.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(gemma_dir).parts)
    )
    single = {role: Path(path) for role in SINGLE_FILES if (path := getattr(checkpoints, role)) is not None}
    lora = single.get("distilled_lora")
    model_set = ModelSet(
        checkpoint=pinned(single["checkpoint"], single["checkpoint"].name),
        gemma_root=gemma_dir.name,
        gemma=gemma,
        spatial_upsampler=pinned(single["spatial_upsampler"], single["spatial_upsampler"].name),
        distilled_lora=None if lora is None else pinned(lora, lora.name),
        checkpoint_config=json.dumps(config, sort_keys=True),
        source="(built locally)",
    )
    _check_layout(model_set)
    return model_set


def write_manifest(models: ModelSet, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(models.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def publish_model_set(checkpoints: CheckpointSet, destination: str, options: Any = None) -> tuple[ModelSet, str]:
    """Upload a local set under `destination` (`s3://bucket/prefix`, or a folder) and its manifest last (a
    manifest in the bucket means a complete set); return the manifest and its URL. Objects already there with
    the same content are not uploaded again."""
    import tempfile

    from cluster.storage import Uploader
    from jobs.keys import join_key, parse_destination

    where = parse_destination(destination)
    if where.scheme == "s3":

        def url_for(path: str) -> str:
            return f"s3://{where.bucket}/{join_key(where.prefix, path)}"

    else:

        def url_for(path: str) -> str:
            return str((Path(where.prefix) / path).resolve())

    models = build_model_set(checkpoints, url_for)
    local = {models.checkpoint.path: Path(checkpoints.checkpoint)}
    local[models.spatial_upsampler.path] = Path(checkpoints.spatial_upsampler)
    if models.distilled_lora is not None:
        local[models.distilled_lora.path] = Path(checkpoints.distilled_lora)
    gemma_parent = Path(checkpoints.gemma_root).parent
    local.update({f.path: gemma_parent / f.path for f in models.gemma})
    with tempfile.TemporaryDirectory(prefix="ltx2-models-") as tmp:
        manifest = write_manifest(models, Path(tmp) / MANIFEST_NAME)
        files = [(local[f.path], f.path, "application/octet-stream") for f in models.files()]
        Uploader(where, options or _default_options()).upload([*files, (manifest, MANIFEST_NAME, "application/json")])
    return models, url_for(MANIFEST_NAME)


# --- resolution on a node ----------------------------------------------------------------------------------


def pull_model_set(
    models: ModelSet,
    cache_dir: Path | None = None,
    on_file: Callable[[ModelFile, bool], None] | None = None,
    options: Any = None,
) -> PullResult:
    """Every file of `models` in this node's cache, fetched where missing and verified against its pins;
    `on_file(file, downloaded)` after each one."""
    started = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    view = cache / "sets" / models.set_id()
    fetcher = _Fetcher(cache, options)
    downloaded, reused = [], []
    for f in models.files():
        target, fetched = fetcher.fetch(f)
        _link(view / f.path, target, cache)
        (downloaded if fetched else reused).append(f.path)
        if on_file is not None:
            on_file(f, fetched)
    checkpoints = CheckpointSet(
        checkpoint=view / models.checkpoint.path,
        gemma_root=view / models.gemma_root,
        spatial_upsampler=view / models.spatial_upsampler.path,
        distilled_lora=None if models.distilled_lora is None else view / models.distilled_lora.path,
    )
    if read_config_metadata(checkpoints.checkpoint) != models.config:
        raise ModelFetchError(
            models.checkpoint.url,
            "its config metadata differs from the checkpoint_config of the manifest",
            "write the manifest with `ltx2-farm models publish` instead of by hand",
        )
    sizes = {f.path: f.size for f in models.files()}
    return PullResult(
        checkpoints, tuple(downloaded), tuple(reused), sum(sizes[p] for p in downloaded), time.perf_counter() - started
    )


class _Fetcher:
    """Gets one pinned file onto this node (one S3 client for the whole set)."""

    def __init__(self, cache: Path, options: Any) -> None:
        self.cache, self.options, self._client = cache, options, None

    def fetch(self, f: ModelFile) -> tuple[Path, bool]:
        """(verified local file, whether it was downloaded now)."""
        if f.url.startswith("s3://"):
            return self._s3(f)
        if f.url.startswith("hf://"):
            return self._hf(f)
        path = Path(f.url)
        if not path.is_file():
            raise ModelFetchError(f.url, f"file not found ({f.path} of the set)", "check the manifest's url")
        _verify(path, f)
        return path, False

    def _s3(self, f: ModelFile) -> tuple[Path, bool]:
        from filelock import FileLock

        blob = self.cache / "blobs" / f.sha256
        if _holds(blob, f):
            return blob, False
        blob.parent.mkdir(parents=True, exist_ok=True)
        (self.cache / "locks").mkdir(exist_ok=True)
        with FileLock(self.cache / "locks" / f"{f.sha256}.lock"):  # released by the kernel if its holder dies
            if _holds(blob, f):  # another process of the node fetched it while this one waited
                return blob, False
            for stale in blob.parent.glob(f"{blob.name}.partial-*"):  # a killed download's (only lock holders write)
                stale.unlink(missing_ok=True)
            tmp = blob.with_name(f"{blob.name}.partial-{os.getpid()}-{threading.get_ident()}")
            try:
                self._download(f, tmp)
                digest = _verify_download(tmp, f)
                os.replace(tmp, blob)
            finally:
                tmp.unlink(missing_ok=True)
            remember_file_sha256(blob, digest)
        return blob, True

    def _download(self, f: ModelFile, tmp: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        from cluster.storage import _redact, s3_client
        from jobs.keys import parse_destination

        where = parse_destination(f.url)
        if self._client is None:
            self._client = s3_client(self.options or _default_options())
        try:
            size = self._client.head_object(Bucket=where.bucket, Key=where.prefix)["ContentLength"]
            if size != f.size:  # refused before 20 GB of the wrong content come down
                raise ModelFetchError(
                    f.url, f"changed since the manifest was written: {size} bytes, pinned {f.size}", _REPUBLISH
                )
            self._client.download_file(where.bucket, where.prefix, str(tmp))
        except ClientError as error:
            raise ModelFetchError(f.url, _client_error(error), _REPUBLISH) from None
        except (BotoCoreError, OSError) as error:
            raise ModelFetchError(f.url, f"download failed: {type(error).__name__}: {_redact(error)}") from None

    def _hf(self, f: ModelFile) -> tuple[Path, bool]:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_id, filename, revision = parse_hf_url(f.url)
        hf_cache = self.cache / "huggingface"
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache, revision=revision)
        try:  # huggingface_hub's own cache and locks: a file already there is not fetched again
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=hf_cache))
        except LocalEntryNotFoundError:
            raise ModelFetchError(
                f.url,
                "not in this node's Hugging Face cache, and the hub cannot be reached (HF_HUB_OFFLINE or no network)",
                f"pull the set where the hub is reachable (`ltx2-farm models pull`), cache {hf_cache}",
            ) from None
        except (OSError, ValueError) as error:  # hub HTTP errors (404, gated, …) are OSErrors; bad ids ValueErrors
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelFetchError(f.url, f"{type(error).__name__}: {first_line}") from None
        _verify(path, f, "the file at this revision is not the one the manifest pins (pin a commit revision)")
        return path, not isinstance(cached, str)


def parse_hf_url(url: str) -> tuple[str, str, str | None]:
    """`hf://org/repo/path/in/repo@revision` → (repo id, filename, revision or None for the default branch)."""
    rest = url.removeprefix("hf://")
    rest, at, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelFetchError(url, "not an hf:// URL", "write it as hf://org/repo/path/in/repo@revision")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision if at else None


def _holds(path: Path, f: ModelFile) -> bool:
    """Whether `path` has the pinned content (digest memoised per path, size and mtime: no re-hash of 40 GB)."""
    return path.is_file() and path.stat().st_size == f.size and cached_file_sha256(path) == f.sha256


def _verify(path: Path, f: ModelFile, fix: str = _REPUBLISH) -> None:
    size = path.stat().st_size
    if size != f.size:
        raise ModelFetchError(f.url, f"not the pinned file: {size} bytes, pinned {f.size}", fix)
    digest = cached_file_sha256(path)
    if digest != f.sha256:
        raise ModelFetchError(f.url, f"not the pinned file: SHA-256 {digest[:12]}…, pinned {f.sha256[:12]}…", fix)


def _verify_download(tmp: Path, f: ModelFile) -> str:
    size = tmp.stat().st_size
    digest = file_sha256(tmp)
    if size != f.size or digest != f.sha256:
        raise ModelFetchError(
            f.url,
            f"changed since the manifest was written: SHA-256 {digest[:12]}…, pinned {f.sha256[:12]}…",
            _REPUBLISH,
        )
    return digest


def _link(link: Path, target: Path, cache: Path) -> None:
    """Point `link` at `target`, atomically (a concurrent reader sees the old link or the new, never none).
    Relative inside the cache, so the cache volume may be mounted at another path in another container."""
    inside = target.resolve().is_relative_to(cache.resolve())
    wanted = os.path.relpath(target, link.parent) if inside else str(target.resolve())
    try:
        if os.readlink(link) == wanted:
            return
    except OSError:
        pass
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}-{threading.get_ident()}")
    tmp.unlink(missing_ok=True)
    os.symlink(wanted, tmp)
    os.replace(tmp, link)


def _client_error(error: Any) -> str:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = error.response.get("Error", {}).get("Code", "")
    return "no such object" if status == 404 or code in ("NoSuchKey", "404") else f"S3 error {code or status}"


def _default_options() -> Any:
    from cluster.storage import StorageOptions

    return StorageOptions(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), addressing_style="path")
