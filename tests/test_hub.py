"""`vit push` and the way back (`--pretrained hf:USER/NAME`, `Classifier.from_pretrained`), offline.

The folder `vit push --to-folder` writes is loaded by timm itself and must give our logits. The
upload and the downloads run through huggingface_hub's real code against a fake Hub put in at
the HTTP boundary: huggingface_hub's own HTTP client with a mock transport
(``huggingface_hub.set_client_factory``), so the requests it sends are what is checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import colour_image
from helpers.models import save_checkpoint, timm_from_folder, tiny_vit
from PIL import Image

from vit.cli import main
from vit.errors import CheckpointError, VitError
from vit.inference.classifier import Classifier
from vit.io import atomic_save
from vit.models.checkpoint import load_checkpoint, make_checkpoint
from vit.models.vision_transformer import VisionTransformer

hub = pytest.importorskip("huggingface_hub", reason="the Hub tests need huggingface_hub "
                          "(pip install -e '.[hub]')")
timm = pytest.importorskip("timm")

CLASSES = ["cat", "dog", "fox"]
METRICS = {"epoch": 7, "train_loss": 0.61, "val_loss": 0.52, "val_top1": 83.25, "val_top5": None}
REPO = "someone/tiny-colours"


# --- a run folder -----------------------------------------------------------------------------


def make_run(folder: Path, model: VisionTransformer, *, classes=CLASSES) -> Path:
    """A run folder as `vit train` leaves it: best.pt (with metrics and config), curves, overlays."""
    preprocess = {"img_size": model.config.img_size, "mean": [0.5, 0.4, 0.3],
                  "std": [0.2, 0.25, 0.3], "crop_pct": 0.875}
    config = {"model": {"name": "tiny"}, "data": {"root": "data/colours"}, "train": {"epochs": 7}}
    ckpt = make_checkpoint(model=model, classes=list(classes), preprocess=preprocess,
                           config=config, epoch=7, step=70, best_top1=83.25, metrics=METRICS)
    atomic_save(ckpt, folder / "best.pt")
    (folder / "overlays").mkdir(parents=True)
    Image.fromarray(colour_image((200, 10, 10), size=(20, 10))).save(folder / "curves.png")
    Image.fromarray(colour_image((10, 200, 10), size=(30, 20))).save(folder / "overlays/grid.png")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), tiny_vit(head_std=2.0))


# --- a fake Hub behind huggingface_hub's HTTP client ------------------------------------------


class FakeHub:
    """Just enough of huggingface.co for create_repo, upload_folder and hf_hub_download."""

    def __init__(self, http):
        self.http = http
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request):
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/" and request.method == "HEAD":
            return self.http.Response(200)
        if path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body['organization']}/{body['name']}"
            self.repos.setdefault(repo, {})
            self.private[repo] = body.get("private") is True or body.get("visibility") == "private"
            return self.http.Response(200, json={"url": f"https://huggingface.co/{repo}"})
        if path == "/api/validate-yaml":
            return self.http.Response(200, json={"errors": [], "warnings": []})
        if path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return self.http.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in files]})
        if path.startswith("/api/models/") and "/commit/" in path:
            return self._commit(path.removeprefix("/api/models/").split("/commit/")[0],
                                request.content)
        if "/resolve/" in path:
            return self._resolve(request.method, *path.lstrip("/").split("/resolve/"))
        return self.http.Response(404, json={"error": f"not faked: {path}"})

    def _commit(self, repo: str, content: bytes):
        for line in content.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                self.repos[repo][value["path"]] = base64.b64decode(value["content"])
        oid = hashlib.sha1(repr(sorted(self.repos[repo])).encode()).hexdigest()
        return self.http.Response(200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/"
                                             f"{oid}", "commitOid": oid})

    def _resolve(self, method: str, repo: str, rest: str):
        if repo not in self.repos:
            return self.http.Response(404, headers={"X-Error-Code": "RepoNotFound"})
        _, filename = rest.split("/", 1)
        data = self.repos[repo].get(filename)
        if data is None:
            return self.http.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        return self.http.Response(200, headers=headers, content=b"" if method == "HEAD" else data)


def _http_module():
    """The HTTP client library huggingface_hub uses (httpx in 1.x, httpx2 in 2.x)."""
    import importlib

    return importlib.import_module(type(hub.get_session()).__module__.split(".")[0])


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Every request huggingface_hub makes goes to a FakeHub; its cache is a temp folder."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http as hub_http

    http = _http_module()
    fake = FakeHub(http)
    previous = hub_http._GLOBAL_CLIENT_FACTORY
    hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(fake)))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    yield fake
    hub.set_client_factory(previous)


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """huggingface_hub's every connection is refused, as on a machine without network."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http as hub_http

    http = _http_module()

    def refuse(request):
        raise http.ConnectError("[Errno 111] Connection refused", request=request)

    previous = hub_http._GLOBAL_CLIENT_FACTORY
    hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(refuse)))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    yield
    hub.set_client_factory(previous)


# --- the folder in timm -----------------------------------------------------------------------


VARIANTS = {
    "tiny": {},
    "registers-avg-qknorm-layerscale": dict(reg_tokens=2, global_pool="avg", qk_norm=True,
                                            init_values=0.1, mlp_ratio=2.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_folder_loads_in_timm_with_our_logits(variant, tmp_path):
    model = tiny_vit(1, **VARIANTS[variant])
    run_dir = make_run(tmp_path / "run", model)
    assert main(["push", str(run_dir), "--to-folder", str(tmp_path / "repo")]) == 0

    folder = tmp_path / "repo"
    timm_model = timm_from_folder(folder)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(timm_model(images), model(images), atol=1e-5, rtol=0)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] in timm.list_models("vit_*")
    assert config["model_args"]["img_size"] == 32 and config["model_args"]["patch_size"] == 8
    # timm's own preprocessing of the model is ours: size, crop and normalisation
    data = timm.data.resolve_data_config({}, model=timm_model)
    assert tuple(data["input_size"]) == (3, 32, 32) and data["crop_pct"] == 0.875
    assert data["mean"] == pytest.approx([0.5, 0.4, 0.3]) and data["std"] == pytest.approx(
        [0.2, 0.25, 0.3])
    assert timm_model.pretrained_cfg["label_names"] == CLASSES


def test_the_folder_is_a_classifier_and_has_the_run_figures(run, tmp_path):
    from vit.publish.hub import write_hub_folder

    folder = write_hub_folder(run, tmp_path / "repo", repo_id=REPO)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "images", "model.safetensors"]
    assert (folder / "images/curves.png").read_bytes() == (run / "curves.png").read_bytes()
    assert (folder / "images/overlays.png").read_bytes() == (run / "overlays/grid.png").read_bytes()
    image = colour_image((30, 140, 220), size=(48, 40))
    pulled = Classifier.from_pretrained(folder, device="cpu")
    original = Classifier.from_checkpoint(run / "best.pt", device="cpu")
    assert pulled.classes == CLASSES and pulled.preprocess == original.preprocess
    torch.testing.assert_close(pulled.predict_proba(image), original.predict_proba(image),
                               atol=0, rtol=0)


def test_the_model_card_renders_with_its_metadata(run, tmp_path):
    from huggingface_hub import ModelCard

    from vit.publish.hub import write_hub_folder

    folder = write_hub_folder(run, tmp_path / "repo", repo_id=REPO)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification"
    assert {"image-classification", "timm", "vit"} <= set(card.data.tags)
    (result,) = card.data.eval_results  # top-5 is None in the metrics: left out
    assert (result.metric_type, result.metric_value) == ("accuracy", 83.25)
    assert (result.dataset_name, result.dataset_split) == ("colours", "validation")
    text = card.text
    for expected in ["| 0 | cat |", "| 2 | fox |", "| validation top-1 (%) | 83.25 |",
                     f'timm.create_model("hf_hub:{REPO}", pretrained=True)',
                     f'Classifier.from_pretrained("{REPO}")', "--pretrained hf:" + REPO,
                     "root: data/colours", "![Training curves](images/curves.png)"]:
        assert expected in text, expected
    for link in ("images/curves.png", "images/overlays.png"):
        assert (folder / link).is_file()


# --- up to the Hub and back -------------------------------------------------------------------


def test_push_uploads_the_folder_through_huggingface_hub(run, tmp_path, fake_hub, capsys):
    from vit.publish.hub import write_hub_folder

    assert main(["push", str(run), "--repo", REPO, "--private"]) == 0
    assert f"pushed {run} to {REPO}: https://huggingface.co/{REPO}/commit/" in capsys.readouterr().out
    assert fake_hub.private[REPO] is True
    assert ("POST", f"/api/models/{REPO}/commit/main") in fake_hub.requests
    expected = write_hub_folder(run, tmp_path / "expected", repo_id=REPO)
    uploaded = fake_hub.repos[REPO]
    local = {str(p.relative_to(expected)): p.read_bytes() for p in expected.rglob("*")
             if p.is_file()}
    assert sorted(uploaded) == sorted(local)
    assert all(uploaded[name] == local[name] for name in local)


def test_timm_loads_the_pushed_model_by_its_hub_name(run, fake_hub):
    from vit.publish.hub import push_to_hub

    push_to_hub(run, REPO)
    model = timm.create_model(f"hf_hub:{REPO}", pretrained=True).eval()  # timm's own download
    assert ("GET", f"/{REPO}/resolve/main/model.safetensors") in fake_hub.requests
    ours = Classifier.from_checkpoint(run / "best.pt", device="cpu").model
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(images), ours(images), atol=1e-5, rtol=0)


def test_pulling_back_goes_through_hf_hub_download(run, fake_hub, monkeypatch):
    from vit.models import pretrained as pretrained_module
    from vit.publish.hub import push_to_hub

    push_to_hub(run, REPO)
    downloads = []
    real = hub.hf_hub_download
    monkeypatch.setattr(hub, "hf_hub_download",
                        lambda *a, **k: downloads.append(a[1]) or real(*a, **k))
    clf = Classifier.from_pretrained(REPO, device="cpu")
    assert sorted(downloads) == ["config.json", "model.safetensors"]
    assert ("GET", f"/{REPO}/resolve/main/model.safetensors") in fake_hub.requests
    original = Classifier.from_checkpoint(run / "best.pt", device="cpu")
    image = colour_image((220, 30, 30), size=(36, 36))
    assert clf.classes == CLASSES
    torch.testing.assert_close(clf.predict_proba(image), original.predict_proba(image))

    model, report = pretrained_module.build_finetune_model(f"hf:{REPO}", num_classes=3,
                                                           classes=CLASSES)
    assert not report.new  # same classes: every tensor, the head too, comes from the Hub
    expected = load_checkpoint(run / "best.pt")["model"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0)


def test_pretrained_hf_reads_a_foreign_timm_repo(fake_hub, tmp_path):
    """A plain timm repository (weights without our metadata): classes from its config.json."""
    from vit.models.pretrained import read_pretrained

    state = tiny_vit(head_std=2.0).state_dict()
    import safetensors.torch

    fake_hub.repos["timm/tiny"] = {
        "model.safetensors": safetensors.torch.save(state),
        "config.json": json.dumps({"architecture": "vit_tiny_patch16_224",
                                   "label_names": CLASSES}).encode()}
    weights = read_pretrained("hf:timm/tiny")
    assert weights.classes == CLASSES and weights.model_config is None
    assert all(torch.equal(weights.state_dict[k], v) for k, v in state.items())


def test_vit_train_fine_tunes_from_the_hub(run, fake_hub, shapes_dataset, tmp_path):
    from vit.publish.hub import push_to_hub

    push_to_hub(run, REPO)
    out = tmp_path / "finetuned"
    assert main(["train", "--data", str(shapes_dataset), "--pretrained", f"hf:{REPO}",
                 "--epochs", "1", "--output", str(out), "--device", "cpu",
                 "train.explain_samples=0"]) == 0
    pushed, trained = load_checkpoint(run / "best.pt"), load_checkpoint(out / "best.pt")
    same = {k: v for k, v in pushed["model_config"].items() if k != "num_classes"}
    assert {k: trained["model_config"][k] for k in same} == same
    assert trained["model_config"]["num_classes"] == 5  # the shapes' classes: a new head


# --- what goes wrong, in one line --------------------------------------------------------------


def test_no_network_is_one_line(run, tmp_path, no_network, capsys):
    assert main(["push", str(run), "--repo", REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot push to {REPO}: huggingface.co is unreachable")
    assert "--to-folder" in err

    with pytest.raises(CheckpointError) as caught:
        Classifier.from_pretrained(REPO)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"cannot download {REPO} from the Hugging Face Hub "
                              "(huggingface.co is unreachable) and it is not in the local cache")


def test_offline_the_cached_copy_is_used(run, fake_hub, tmp_path):
    from vit.models.pretrained import read_pretrained
    from vit.publish.hub import push_to_hub

    push_to_hub(run, REPO)
    online = Classifier.from_pretrained(REPO, device="cpu")
    http = _http_module()

    def refuse(request):
        raise http.ConnectError("[Errno 111] Connection refused", request=request)

    hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(refuse)))
    fake_hub.requests.clear()
    offline = Classifier.from_pretrained(REPO, device="cpu")
    assert fake_hub.requests == []  # nothing reached the Hub: the cache answered
    image = colour_image((30, 200, 40))
    torch.testing.assert_close(offline.predict_proba(image), online.predict_proba(image))
    # the folder of a download (or of --to-folder) works as --pretrained too
    from vit.publish.hub import write_hub_folder

    folder = write_hub_folder(run, tmp_path / "pushed")
    weights = read_pretrained(str(folder))
    assert weights.classes == CLASSES and weights.model_config is not None


def test_a_missing_repository_or_file_is_one_line(fake_hub):
    with pytest.raises(CheckpointError, match=f"^no model {REPO} on the Hugging Face Hub"):
        Classifier.from_pretrained(REPO)
    fake_hub.repos[REPO] = {"config.json": b"{}"}
    with pytest.raises(CheckpointError, match=f"^{REPO} has no model.safetensors"):
        Classifier.from_pretrained(REPO)


def test_a_refused_push_says_to_log_in(run, fake_hub, monkeypatch, capsys):
    answer = fake_hub.__call__

    def unauthorized(request):
        if request.url.path == "/api/repos/create":
            return fake_hub.http.Response(401, json={"error": "Invalid credentials"})
        return answer(request)

    monkeypatch.setattr(FakeHub, "__call__", lambda self, request: unauthorized(request))
    assert main(["push", str(run), "--repo", REPO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: the Hub refused the push to {REPO} (")
    assert err.endswith("log in with `hf auth login` or set HF_TOKEN to a token that may write "
                        "there")


def test_what_is_neither_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder nor a Hub repository id"):
        Classifier.from_pretrained(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        Classifier.from_pretrained(tmp_path)


def test_a_missing_hub_extra_names_the_install_command(monkeypatch, run, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert main(["push", str(run), "--to-folder", str(tmp_path / "repo")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: the Hugging Face Hub needs huggingface_hub: pip install 'vit[hub]'")
    with pytest.raises(VitError, match=r"pip install 'vit\[hub\]'"):
        Classifier.from_pretrained(REPO)


def test_push_needs_a_run(tmp_path, capsys):
    assert main(["push", str(tmp_path), "--to-folder", str(tmp_path / "repo")]) == 2
    assert "holds no best.pt" in capsys.readouterr().err
    save_checkpoint(tmp_path / "model.pt", tiny_vit(head_std=2.0), CLASSES)
    assert main(["push", str(tmp_path / "model.pt"), "--to-folder", str(tmp_path / "r")]) == 0
    assert np.array_equal(Classifier.from_pretrained(tmp_path / "r").predict_proba(
        colour_image((1, 2, 3))), Classifier.from_checkpoint(tmp_path / "model.pt").predict_proba(
        colour_image((1, 2, 3))))
