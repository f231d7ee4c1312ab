"""`analyze` on tiny HF-style checkpoints built here (GPT-2 tied, Pythia untied, sharded, OPT-350m-like, .bin),
compared with brute force; the --series fit; bad inputs. The Hub is faked: tests never touch the network."""
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import widthlab.analyze as A
from widthlab import WidthlabError
from widthlab.cli import main


def rand(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    # a shared offset makes the rows anisotropic, so mean_cos and mean |cos| are far from their random values
    return torch.randn(n, m, generator=g) + 0.5 * torch.randn(1, m, generator=g)


def brute(W: torch.Tensor) -> dict[str, float]:
    Wh = torch.nn.functional.normalize(W.double(), dim=1)
    C = Wh @ Wh.T
    off = ~torch.eye(W.shape[0], dtype=torch.bool)
    return {"mean_cos2": C[off].square().mean().item(), "mean_abs_cos": C[off].abs().mean().item(),
            "max_abs_cos": C[off].abs().max().item(), "mean_cos": C[off].mean().item()}


def write_dir(d, tensors: dict, config: dict | None = None, name="model.safetensors"):
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, name))
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
    return str(d)


@pytest.fixture
def gpt2_dir(tmp_path):
    W = rand(300, 16, 0)
    return write_dir(tmp_path / "tiny-gpt2", {"wte.weight": W, "wpe.weight": rand(32, 16, 1),
                                              "h.0.ln_1.weight": torch.ones(16)},
                     {"model_type": "gpt2", "n_embd": 16, "vocab_size": 300}), W


def check_stats(stats: dict, W: torch.Tensor):
    b = brute(W)
    for k in ("mean_cos2", "mean_abs_cos", "max_abs_cos", "mean_cos"):
        assert stats[k] == pytest.approx(b[k], rel=1e-9), k
    assert stats["mean_cos2_pairs"] == pytest.approx(b["mean_cos2"], rel=1e-9)  # the paper's method agrees
    assert stats["kappa"] == pytest.approx(W.shape[1] * b["mean_cos2"], rel=1e-9)


def test_gpt2_tied(gpt2_dir, tmp_path, capsys):
    path, W = gpt2_dir
    out = tmp_path / "a.json"
    res = A.analyze(model=path, out=str(out), block_rows=64)
    r = res["models"][0]
    assert (r["tensor"], r["n"], r["m"], r["name"], r["hidden_size"]) == ("wte.weight", 300, 16, "tiny-gpt2", 16)
    check_stats(r["stats"], W)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file holds what was returned
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # atomic write left no temp file
    printed = capsys.readouterr().out
    assert "tiny-gpt2" in printed and f"{r['stats']['mean_cos2']:.5f}" in printed


def test_pythia_untied_prefers_explicit_head(tmp_path):
    U, E = rand(200, 24, 2), rand(200, 24, 3)
    path = write_dir(tmp_path / "pythia", {"gpt_neox.embed_in.weight": E, "embed_out.weight": U},
                     {"model_type": "gpt_neox", "hidden_size": 24})
    r = A.analyze(model=[path], out=str(tmp_path / "p.json"), pairs=False)["models"][0]
    assert r["tensor"] == "embed_out.weight"
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(U)["mean_cos2"], rel=1e-9)
    assert "mean_abs_cos" not in r["stats"]  # pairs off


def test_sharded_index_reads_only_the_heads_shard(tmp_path):
    d = tmp_path / "qwen-sharded"
    U, E = rand(150, 8, 4), rand(150, 8, 5)
    write_dir(d, {"model.embed_tokens.weight": E, "model.norm.weight": torch.ones(8)},
              {"model_type": "qwen2", "hidden_size": 8, "tie_word_embeddings": False},
              name="model-00001-of-00002.safetensors")
    write_dir(d, {"lm_head.weight": U}, name="model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "model.norm.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    r = A.analyze(model=str(d), out=str(tmp_path / "q.json"), block_rows=40)["models"][0]
    assert r["tensor"] == "lm_head.weight" and r["file"].endswith("model-00002-of-00002.safetensors")
    check_stats(r["stats"], U)
    # the shard holding the head missing → a one-line error naming the shard
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(WidthlabError, match="model-00002-of-00002.safetensors"):
        A.analyze(model=str(d), out=str(tmp_path / "q.json"))


def test_opt350m_like_notes_the_head_width(tmp_path):
    W = rand(120, 12, 6)  # head 12 wide, hidden 24 (OPT-350m: 512 vs 1024)
    path = write_dir(tmp_path / "opt", {"model.decoder.embed_tokens.weight": W},
                     {"model_type": "opt", "hidden_size": 24, "word_embed_proj_dim": 12})
    r = A.analyze(model=path, out=str(tmp_path / "o.json"), pairs=False)["models"][0]
    assert r["m"] == 12 and r["hidden_size"] == 24 and "m = 12" in r["note"]


def test_single_file_and_torch_bin(tmp_path):
    W = rand(100, 8, 7)
    f = write_dir(tmp_path / "one", {"lm_head.weight": W, "model.embed_tokens.weight": rand(100, 8, 8)},
                  name="tiny.safetensors")
    r = A.analyze(model=os.path.join(f, "tiny.safetensors"), out=str(tmp_path / "f.json"))["models"][0]
    assert r["tensor"] == "lm_head.weight" and r["name"] == "tiny"
    check_stats(r["stats"], W)
    d = tmp_path / "bin"
    d.mkdir()
    torch.save({"transformer.wte.weight": W.to(torch.bfloat16), "transformer.h.0.x": torch.ones(2)},
               d / "pytorch_model.bin")
    r = A.analyze(model=str(d), out=str(tmp_path / "b.json"), pairs=False)["models"][0]
    assert r["tensor"] == "transformer.wte.weight" and r["dtype"] == "bfloat16"
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(W.to(torch.bfloat16))["mean_cos2"], rel=1e-9)


def test_hub_id_downloads_only_config_index_and_head_shard(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo = tmp_path / "hub"
    U = rand(90, 8, 9)
    write_dir(repo, {"embed_out.weight": U}, {"hidden_size": 8}, name="model-00002-of-00002.safetensors")
    write_dir(repo, {"gpt_neox.embed_in.weight": rand(90, 8, 10)}, name="model-00001-of-00002.safetensors")
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "gpt_neox.embed_in.weight": "model-00001-of-00002.safetensors",
        "embed_out.weight": "model-00002-of-00002.safetensors"}}))
    fetched = []

    def fake_download(repo_id, filename, **kw):
        assert repo_id == "Org/tiny-pythia"
        fetched.append(filename)
        if not (repo / filename).exists():
            raise EntryNotFoundError(filename)
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    res = A.analyze(model="Org/tiny-pythia", out=str(tmp_path / "h.json"), pairs=False)
    r = res["models"][0]
    assert r["name"] == "Org--tiny-pythia" and r["tensor"] == "embed_out.weight"
    assert fetched == ["config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors"]
    assert r["stats"]["mean_cos2"] == pytest.approx(brute(U)["mean_cos2"], rel=1e-9)
    # a repo with no weights files at all
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: (_ for _ in ()).throw(EntryNotFoundError(filename)))
    with pytest.raises(WidthlabError, match="found no weights for 'Org/empty'"):
        A.analyze(model="Org/empty", out=str(tmp_path / "e.json"))


def test_series_fit_on_three_widths(tmp_path):
    paths, ms, c2 = [], [8, 16, 32], []
    for i, m in enumerate(ms):
        W = torch.randn(600, m, generator=torch.Generator().manual_seed(20 + i))  # isotropic: mean cos² ≈ 1/m
        paths.append(write_dir(tmp_path / f"w{m}", {"lm_head.weight": W}))
        c2.append(brute(W)["mean_cos2"])
    out = tmp_path / "s.json"
    res = A.analyze(model=paths, series=True, out=str(out), pairs=False)
    fit = res["series"]
    x, y = np.log(ms), np.log(c2)
    slope, icpt = np.polyfit(x, y, 1)
    resid = y - (slope * x + icpt)
    se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    half = 12.7062047361747 * se  # t_{0.975} with 1 degree of freedom
    assert fit["slope"] == pytest.approx(slope, rel=1e-9) and fit["intercept"] == pytest.approx(icpt, rel=1e-9)
    assert fit["slope_ci95"] == pytest.approx([slope - half, slope + half], rel=1e-6)
    assert abs(fit["slope"] + 1) < 0.05 and fit["guide_slope"] == -1.0  # random rows: the 1/m law itself
    assert json.loads(out.read_text())["series"]["n_models"] == 3
    with pytest.raises(WidthlabError, match="at least 2 different widths"):
        A.analyze(model=paths[:1], series=True, out=str(tmp_path / "x.json"), pairs=False)


def test_cli_entry_point(gpt2_dir, tmp_path, capsys):
    path, W = gpt2_dir
    other = write_dir(tmp_path / "w8", {"lm_head.weight": rand(100, 8, 11)})
    out = tmp_path / "cli.json"
    main(["analyze", "--model", path, "--out", str(out), "--block_rows", "50"])
    r = json.loads(out.read_text())["models"][0]
    check_stats(r["stats"], W)
    main(["analyze", "--model+", path, "--model+", other, "--series", "true", "--pairs", "false",
          "--out", str(out)])
    res = json.loads(out.read_text())
    assert [m["m"] for m in res["models"]] == [16, 8] and res["series"]["slope_ci95"] is None  # 2 models: no CI
    main(["analyze", "--model", f"[{path}, {other}]", "--pairs", "false", "--out", str(out)])
    assert len(json.loads(out.read_text())["models"]) == 2
    capsys.readouterr()


def test_default_out_path(gpt2_dir, tmp_path, monkeypatch):
    path, W = gpt2_dir
    monkeypatch.chdir(tmp_path)
    A.analyze(model=path, pairs=False)
    saved = json.loads((tmp_path / "runs" / "analyze" / "tiny-gpt2.json").read_text())
    assert saved["models"][0]["stats"]["mean_cos2"] == pytest.approx(brute(W)["mean_cos2"], rel=1e-9)
    A.analyze(model=[path, path], pairs=False)
    assert (tmp_path / "runs" / "analyze" / "models.json").exists()


@pytest.mark.parametrize("make, match", [
    (lambda d: str(d / "does-not-exist"), "does not exist"),
    (lambda d: write_dir(d / "nohead", {"foo.weight": torch.ones(4, 4)}), "no LM-head tensor"),
    (lambda d: (d / "bad.safetensors").write_bytes(b"not a safetensors file") and str(d / "bad.safetensors"),
     "cannot read"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no weights in"),
    (lambda d: write_dir(d / "vec", {"lm_head.weight": torch.ones(5)}), "not \\(vocab, width\\)"),
])
def test_bad_inputs(tmp_path, capsys, make, match):
    spec = make(tmp_path)
    with pytest.raises(WidthlabError, match=match):
        A.analyze(model=spec, out=str(tmp_path / "x.json"))
    with pytest.raises(SystemExit) as e:  # through the CLI: exit 2 and one line naming the problem
        main(["analyze", "--model", spec, "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "x.json").exists()
