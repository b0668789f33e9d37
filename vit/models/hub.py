"""A model on the Hugging Face Hub as local files: ``user/name`` -> a folder holding
``config.json`` (timm's format) and ``model.safetensors``, through ``huggingface_hub``'s
``hf_hub_download`` (and its cache). Written by ``vit push``; read back by
``--pretrained hf:user/name`` and ``Classifier.from_pretrained("user/name")``.

    hub_folder("user/name")          # downloads (or finds in the cache) -> Path of the snapshot
    hub_folder("user/name@v1")       # a branch, tag or commit
    hub_folder("path/to/folder")     # a local folder written by `vit push --to-folder` as is

Every failure is one ``CheckpointError`` line: no network, no such repository, a missing file,
or huggingface_hub not installed (``pip install 'vit[hub]'``).
"""

from __future__ import annotations

import logging
import os
from importlib import import_module
from pathlib import Path
from typing import Any

from vit.errors import CheckpointError, first_line

__all__ = ["HF_PREFIX", "WEIGHTS_NAME", "CONFIG_NAME", "HUB_INSTALL", "hub_folder",
           "import_hub", "hub_reachable", "hub_host", "network_errors"]

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HUB_INSTALL = "pip install 'vit[hub]'"
PROBE_TIMEOUT_S = 5.0


def import_hub() -> Any:
    """``huggingface_hub``, or one line that names the install command."""
    try:
        import huggingface_hub
    except ImportError as err:
        raise CheckpointError(f"the Hugging Face Hub needs huggingface_hub: {HUB_INSTALL}") from err
    return huggingface_hub


def hub_folder(source: str | os.PathLike[str]) -> Path:
    """The local folder with ``config.json`` and ``model.safetensors`` of ``source``: an
    existing folder as is, else a Hub repository id ``user/name[@revision]`` (a leading
    ``hf:`` is allowed), downloaded into the Hugging Face cache."""
    text = os.fspath(source)
    if Path(text).is_dir():
        folder = Path(text)
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{folder} holds no {WEIGHTS_NAME}; pass a folder written by "
                                  "`vit push --to-folder`, or a Hub repository id user/name")
        return folder
    repo_id, _, revision = text.removeprefix(HF_PREFIX).partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{text!r} is neither a folder nor a Hub repository id "
                              "(user/name, or hf:user/name)")
    hub = import_hub()
    local_only = hub.constants.is_offline_mode() or not hub_reachable()
    weights = _download(repo_id, WEIGHTS_NAME, revision or None, local_only=local_only)
    _download(repo_id, CONFIG_NAME, revision or None, local_only=local_only)
    return weights.parent


def network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP client raises when it cannot talk to the server."""
    hub = import_hub()
    client = import_module(type(hub.get_session()).__module__.split(".")[0])  # httpx or httpx2
    return (OSError, getattr(client, "TransportError", OSError))


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub answers at all, asked once through huggingface_hub's own HTTP session
    (its proxies and certificates): hf_hub_download retries a refused connection for ~20 s."""
    hub = import_hub()
    try:
        hub.get_session().head(hub.constants.ENDPOINT, timeout=timeout)
    except network_errors() as err:
        logger.debug("the Hub is unreachable: %s", first_line(err))
        return False
    return True


def _download(repo_id: str, filename: str, revision: str | None, *, local_only: bool) -> Path:
    """One file of a Hub model through ``hf_hub_download`` (only from the cache with
    ``local_only``); each failure one line."""
    hub = import_hub()
    from huggingface_hub import errors

    try:
        return Path(hub.hf_hub_download(repo_id, filename, revision=revision,
                                        local_files_only=local_only))
    except errors.LocalEntryNotFoundError as err:  # offline and not cached
        reason = ("HF_HUB_OFFLINE is set" if hub.constants.is_offline_mode()
                  else f"{hub_host()} is unreachable")
        raise CheckpointError(
            f"cannot download {repo_id} from the Hugging Face Hub ({reason}) and it is not in "
            f"the local cache; on a machine with internet run `hf download {repo_id} "
            f"--local-dir DIR`, copy DIR here and pass DIR instead") from err
    except errors.GatedRepoError as err:
        raise CheckpointError(f"{repo_id} is gated on the Hub: accept its terms on "
                              f"{hub.constants.ENDPOINT}/{repo_id} and log in (hf auth login)"
                              ) from err
    except errors.RepositoryNotFoundError as err:
        raise CheckpointError(
            f"no model {repo_id} on the Hugging Face Hub (a private one needs `hf auth login` "
            "or HF_TOKEN)") from err
    except errors.RevisionNotFoundError as err:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}") from err
    except errors.EntryNotFoundError as err:
        raise CheckpointError(f"{repo_id} has no {filename}; models written by `vit push` "
                              f"have {WEIGHTS_NAME} and {CONFIG_NAME}") from err
    except (errors.HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"cannot download {repo_id}/{filename}: {first_line(err)}") from err


def hub_host() -> str:
    """The Hub's host name, for messages."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
