"""`python -m train toy`: the toy model of superposition of Liu, Liu & Gore (2025), arXiv 2505.10465.

    y = ReLU(W Wᵀ x + b),   W: (n, m), b: (n,),   x_i = Bernoulli(p_i)·U(0, 2)   (data: data.py)

n features are squeezed into m < n dimensions; the signed row decay γ (Eq. 2, interventions/signed_decay.py)
sets the regime: γ > 0 keeps ≈ m rows alive (weak superposition, loss = the dropped features' frequency mass),
γ < 0 keeps all rows at norm ≈ 1 (strong superposition, loss ∝ the rows' overlaps ∝ 1/m). For each
(γ, distribution, m) we train on fresh data, measure the final loss in the paper's unit (a SUM over the n
features: L_paper = n × mean MSE), the row-norm fractions φ½, φ₁ and the mean squared overlap, and fit
L ∝ m^(−α_m) per (γ, distribution).

The input is sampled sparsely (≈ B·E active entries, not B·n random numbers) and h = Wᵀx is a gather of W's rows;
the output y and the loss still cover all n features exactly. What a run writes (config.json, results, fits, the
φ½/φ₁ trajectory, and the cross-run table docs/results/toy/fits.csv) is described in results.py.
"""
from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from widthlab import WidthlabError, geometry
from widthlab.interventions.signed_decay import signed_row_decay_
from widthlab.scaling.fit import fit_loglog
from widthlab.toy.data import DISTRIBUTIONS, densify, frequencies, ideal_weak_loss, lr_at, sample_sparse
from widthlab.toy.results import git_commit, now, record, write_config, write_run


# ---------------------------------------------------------------------------------------------------- the model
def forward_sparse(W: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """y: (B, n) from active entries of x. h = Wᵀx = Σ_active v·W_i, a gather of T rows instead of a (B, n) matmul."""
    h = torch.zeros(batch_size, W.shape[1], dtype=W.dtype, device=W.device)
    h = h.index_add(0, rows, vals[:, None] * W[feats])  # (B, m)
    return torch.relu(torch.addmm(b, h, W.t()))


def loss_and_grad_sparse(W: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, feats: torch.Tensor,
                         vals: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean MSE over all B × n outputs (the paper's nn.MSELoss) and its exact gradient, written into W.grad, b.grad.

    Hand-written backward because the step is memory-bound on the (B, n) output: autograd makes ~12 passes over
    it (densified target, difference, square, relu mask, …); this makes 4. With z = hWᵀ + b, y = ReLU(z):
        L = (Σ y² − Σ_a y_a² + Σ_a (y_a − v_a)²) / (B n)        (a: the active entries)
        G = dL/dz · Bn/2 = y − x on z > 0, else 0               (y = 0 where z ≤ 0, so G = y off the active set)
        dW = (2/Bn)(Gᵀh + scatter_rows(v · G W)),  db = (2/Bn) Σ_B G
    Verified against autograd in tests/test_toy.py.
    """
    B, n = batch_size, W.shape[0]
    with torch.no_grad():
        Wf = W.detach()
        h = torch.zeros(B, Wf.shape[1], dtype=Wf.dtype, device=Wf.device).index_add_(0, rows, vals[:, None] * Wf[feats])
        G = torch.addmm(b.detach(), h, Wf.t()).relu_()  # y, then overwritten in place by G
        ya = G[rows, feats]
        ga = (ya - vals) * (ya > 0)
        loss = (torch.dot(G.view(-1), G.view(-1)) - ya.square().sum() + (ya - vals).square().sum()) / (B * n)
        G[rows, feats] = ga
        c = 2.0 / (B * n)
        gW = G.t() @ h  # (n, m): through the decoder
        gW.index_add_(0, feats, vals[:, None] * (G @ Wf)[rows])  # through the encoder h = Σ v W_i
        W.grad, b.grad = gW.mul_(c), G.sum(0).mul_(c)
    return loss


def forward_dense(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The paper's forward, x: (B, n) → y: (B, n)."""
    return torch.relu(x @ W @ W.t() + b)


# ---------------------------------------------------------------------------------------------------- metrics
def row_norm_fractions(W: torch.Tensor) -> tuple[float, float]:
    """(φ½, φ₁): fractions of rows with ‖W_i‖ > 1/2 (represented) and > 1 (strongly represented), paper Eq. 3.

    Absolute thresholds as in the paper; the GPT metric `phi_half` in geometry normalises by the rms norm instead.
    """
    r = W.detach().norm(dim=1)
    return float((r > 0.5).double().mean()), float((r > 1.0).double().mean())


def mean_cos2(W: torch.Tensor) -> float:
    """Mean over i ≠ j of (ŵ_i·ŵ_j)² (geometry.mean_cos2, exact in O(n·m²)); NaN for fewer than 2 rows."""
    return geometry.mean_cos2(W.detach()) if W.shape[0] >= 2 else float("nan")


def geometry_point(W: torch.Tensor) -> dict:
    """φ½, φ₁ and the mean cos² over all rows and over the rows past norm 1 (NaN if fewer than 2 of them)."""
    phi_half, phi_one = row_norm_fractions(W)
    big = W.detach()[W.detach().norm(dim=1) > 1.0]
    return dict(phi_half=phi_half, phi_one=phi_one, mean_cos2_all=mean_cos2(W), mean_cos2_gt1=mean_cos2(big))


# ---------------------------------------------------------------------------------------------------- fitting
def fit_mask(gamma: float, distribution: str, ms: list[int], rule: str) -> list[bool]:
    """Which m enter the α_m fit. 'all', or 'paper_large' (App. D.1, n = 10240): strong (γ < 0) exponential uses
    all points, strong power/linear m ≥ 32 (from the 3rd point); weak power the last 5 (m ≥ 64), weak others all."""
    if rule == "all":
        return [True] * len(ms)
    if gamma < 0:
        return [distribution == "exponential" or m >= 32 for m in ms]
    return [distribution != "power" or m >= 64 for m in ms]


def fit_alpha_m(ms: list[int], losses: list[float]) -> dict:
    """L ∝ m^(−α_m) by OLS in log-log (scaling.fit.fit_loglog): α_m, its OLS standard error (the paper's error
    bar), a 95% t interval (n − 2 dof), and R²."""
    f = fit_loglog(ms, losses, ci=0.95)
    lx, ly = torch.tensor(ms, dtype=torch.float64).log(), torch.tensor(losses, dtype=torch.float64).log()
    resid = ly - f.intercept - f.slope * lx
    r2 = float(1 - resid.square().sum() / (ly - ly.mean()).square().sum())
    return dict(alpha_m=-f.slope, se=f.stderr, ci_low=-f.ci[1], ci_high=-f.ci[0], r2=r2)


# ---------------------------------------------------------------------------------------------------- training
def train_one(p: torch.Tensor, m: int, gamma: float, steps: int, batch_size: int, lr_w: float, lr_b: float,
              warmup: int, min_lr_ratio: float, eval_batches: int, seed: int, device: str, loss_scale: float = 1.0,
              writer=None, log_every: int = 100, metric_every: int = 1000) -> dict:
    """Train one toy model on fresh data; returns the final loss (paper units, fresh data), the final geometry,
    `train_loss_last100` and `history`: every `metric_every` steps the mean train loss since the previous point,
    φ½, φ₁ and the overlaps (the convergence record; also TensorBoard scalars if `writer` is given)."""
    n = p.numel()
    g = torch.Generator().manual_seed(seed)
    # the paper's init: rows of norm ≈ 1, b ~ N(0, 1)
    W = (torch.randn(n, m, generator=g) / math.sqrt(m)).to(device).requires_grad_()
    b = torch.randn(n, generator=g).to(device).requires_grad_()
    # Adam, not AdamW: Eq. 2 replaces AdamW's decoupled decay (b is never decayed, as in the paper)
    opt = torch.optim.Adam([{"params": [W], "lr": lr_w}, {"params": [b], "lr": lr_b}],
                           betas=(0.9, 0.999), eps=1e-8)

    def batch():
        rows, feats, vals = sample_sparse(p, batch_size, g)
        return rows.to(device), feats.to(device), vals.to(device)

    # running sums stay on the device: no host sync per step on a GPU
    window, tail = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device,
                                                                                    dtype=torch.float64)
    since, history = 0, []
    for step in range(1, steps + 1):
        scale = lr_at(step, 1.0, steps, warmup, min_lr_ratio)
        for group, peak in zip(opt.param_groups, (lr_w, lr_b)):
            group["lr"] = peak * scale
        rows, feats, vals = batch()
        loss = loss_and_grad_sparse(W, b, rows, feats, vals, batch_size)  # mean over B × n, as the paper's code
        if loss_scale != 1.0:  # the large-model code's `loss * 100`: under Adam it only shrinks eps's weight
            W.grad.mul_(loss_scale), b.grad.mul_(loss_scale)
        signed_row_decay_(W.data, lr_w * scale, gamma)  # before the Adam update, with the current lr (adamw.py)
        opt.step()
        window += loss
        since += 1
        if step > steps - 100:  # the paper's code keeps every step's train loss on fresh data; its last 100
            tail += loss        # batches are 100 × batch size samples, like the final evaluation below
        if writer is not None and (step % log_every == 0 or step == steps):
            writer.add_scalar("train/loss", loss.item() * n, step)
            writer.add_scalar("train/lr", lr_w * scale, step)
        if step % metric_every == 0 or step == steps:
            point = dict(step=step, train_loss=window.item() / since * n, **geometry_point(W))
            history.append(point)
            window.zero_()
            since = 0
            if writer is not None:
                _log_point(writer, point)

    with torch.no_grad():  # final loss on fresh data, 100 batches as in the paper's small-model evaluation
        total = 0.0
        for _ in range(eval_batches):
            rows, feats, vals = batch()
            y = forward_sparse(W, b, rows, feats, vals, batch_size)
            total += F.mse_loss(y, densify(rows, feats, vals, batch_size, n)).item()
    return dict(loss=total / eval_batches * n, train_loss_last100=tail.item() / min(100, steps) * n,
                **geometry_point(W), history=history)


def _log_point(writer, point: dict) -> None:
    step = point["step"]
    writer.add_scalar("train/loss_window", point["train_loss"], step)
    for key in ("phi_half", "phi_one", "mean_cos2_all", "mean_cos2_gt1"):
        if not math.isnan(point[key]):  # cos² over rows past norm 1 needs 2 such rows
            writer.add_scalar(f"geometry/{'mean_cos2' if key == 'mean_cos2_all' else key}", point[key], step)


def check_device(device: str) -> None:
    """A device this torch can use, or one line saying why not (torch itself raises an AssertionError traceback
    for cuda on a CPU-only build, and a late RuntimeError for a missing index)."""
    try:
        d = torch.device(device)
    except RuntimeError:
        raise WidthlabError(f"device {device!r} is not a torch device; use cpu or cuda[:index]") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise WidthlabError(f"device {device!r}: no CUDA GPU is visible (torch {torch.__version__}, {build}); "
                                f"use --device cpu")
        if d.index is not None and d.index >= count:
            raise WidthlabError(f"device {device!r}: only {count} CUDA device(s) visible, cuda:0…cuda:{count - 1}")
    elif d.type != "cpu":
        try:
            torch.zeros(1, device=d)
        except (RuntimeError, AssertionError) as e:
            raise WidthlabError(f"device {device!r} is not usable here ({str(e).splitlines()[0]}); use --device cpu"
                                ) from None


# ---------------------------------------------------------------------------------------------------- CLI
def toy(n: int = 1000, m: list[int] = [10, 15, 25, 39, 63, 100], gammas: list[float] = [-1.0, 1.0],
        distributions: list[str] = ["power"], alpha: float = 1.0, exp_scale: float = 400.0, density: float = 1.0,
        steps: int = 20000, steps_list: list[int] | None = None, batch_size: int = 2048, lr: float = 1e-2,
        lr_rule: str = "constant", warmup: float = 2000, min_lr_ratio: float = 0.05, eval_batches: int = 100,
        fit_rule: str = "all", loss_scale: float = 1.0, seed: int = 0, name: str = "toy", out_dir: str = "runs/toy",
        fits_table: str | None = None, device: str = "cpu", threads: int = 1, log_every: int = 100,
        metric_every: int = 1000) -> None:
    """Train the toy model of superposition over a ladder of widths and fit the width exponent α_m.

    Args:
        n: number of features (rows of W).
        m: ladder of widths, each < n.
        gammas: signed row-decay coefficients γ (Eq. 2); < 0 strong, > 0 weak superposition.
        distributions: frequency laws, any of power, exponential, linear.
        alpha: exponent of the power law p_i ∝ i^-alpha, in the PAPER's convention (the paper's code uses alpha − 1).
        exp_scale: decay scale s of the exponential law p_i ∝ exp(-i/s) (400 = the large model's `exponential1`).
        density: activation density E = Σ p_i, the expected number of active features per sample.
        steps: optimizer steps per model (fresh batch each step).
        steps_list: a convergence check: train the whole ladder once per length in this list, each with its own
            full schedule (replaces `steps`; one α_m per length). Give `warmup` as a fraction, e.g. 0.1.
        batch_size: samples per step.
        lr: peak learning rate of W (and of b under lr_rule=constant).
        lr_rule: constant (small models: lr for W and b), or paper_large (lr_W = lr·(8/m)^0.25, lr_b = 2/m).
        warmup: linear warm-up, in steps if ≥ 1, else as a fraction of the steps (large models: 0.05).
        min_lr_ratio: the cosine schedule ends at this fraction of the peak.
        eval_batches: fresh batches for the final loss (the paper: 100 × batch size).
        loss_scale: gradient multiplier (the large-model code backpropagates 100 × loss; with n = 10240 the mean-MSE
            gradients of rare rows are ~1e-9, below Adam's eps = 1e-8, so the scale matters).
        fit_rule: which widths enter the α_m fit: all, or paper_large (App. D.1 point ranges).
        seed: seed of init and data (the same for every width, so the ladder is comparable).
        name: run name; TensorBoard events and results go to out_dir/name.
        out_dir: root of toy runs.
        fits_table: also put every fitted curve into this cross-run CSV (e.g. docs/results/toy/fits.csv), replacing
            this run's earlier rows there; `python -m widthlab.toy.results RUN_DIR` does the same afterwards.
        device: torch device (cpu or cuda).
        threads: torch CPU threads (1 on the shared 2-core box).
        log_every: steps between loss logs.
        metric_every: steps between points of the convergence record (trajectory.csv and the TensorBoard
            geometry/phi_half, geometry/phi_one, geometry/mean_cos2 scalars).
    """
    settings = dict(locals())  # the arguments, archived in config.json before anything else is defined
    lengths = list(steps_list) if steps_list is not None else [steps]
    if not lengths or min(lengths) < 1 or batch_size < 1 or eval_batches < 1 or metric_every < 1:
        raise WidthlabError(f"steps (every entry of steps_list), batch_size, eval_batches, metric_every must be ≥ 1 "
                            f"(got {lengths}, {batch_size}, {eval_batches}, {metric_every})")
    if not m or any(k < 1 or k >= n for k in m):
        raise WidthlabError(f"every width in m must satisfy 1 ≤ m < n = {n}; got {m}")
    if not gammas:
        raise WidthlabError("gammas is empty; give at least one γ, e.g. --gammas '[-1.0]' (< 0 strong, > 0 weak)")
    bad = [d for d in distributions if d not in DISTRIBUTIONS]
    if bad or not distributions:
        raise WidthlabError(f"unknown distribution(s) {bad}; use any of {list(DISTRIBUTIONS)}")
    if lr_rule not in ("constant", "paper_large") or fit_rule not in ("all", "paper_large"):
        raise WidthlabError(f"lr_rule/fit_rule must be constant|paper_large and all|paper_large; got {lr_rule}, {fit_rule}")
    if not warmup > 0:
        raise WidthlabError(f"warmup must be > 0 (steps, or a fraction of steps if < 1); got {warmup}")
    if warmup >= 1 and warmup >= min(lengths):
        raise WidthlabError(f"warmup of {warmup:g} steps does not end before {min(lengths)} steps; shorten it or give "
                            f"it as a fraction (e.g. --warmup 0.1)")
    check_device(device)
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(threads)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, settings, dict(git_commit=git_commit(), torch=torch.__version__, started=now(),
                                     device_name=torch.cuda.get_device_name(device) if device.startswith("cuda")
                                     else platform.processor() or "cpu"))
    ms = sorted(m)
    rows, fits, trajectory = [], [], []
    for dist in distributions:
        p = frequencies(n, dist, alpha, density, exp_scale)
        for gamma in gammas:
            for total in lengths:
                warm = int(round(warmup * total)) if warmup < 1 else int(warmup)
                for width in ms:
                    lr_w, lr_b = (lr, lr) if lr_rule == "constant" else (lr * (8 / width) ** 0.25, 2.0 / width)
                    tag = f"{dist}_g{gamma:+g}_m{width}" + (f"_s{total}" if steps_list is not None else "")
                    t0 = time.time()
                    with SummaryWriter(str(out / tag)) as writer:
                        res = train_one(p, width, gamma, total, batch_size, lr_w, lr_b, warm, min_lr_ratio,
                                        eval_batches, seed, device, loss_scale, writer, log_every, metric_every)
                        writer.add_scalar("final/loss", res["loss"], total)
                    sec = time.time() - t0
                    key = dict(gamma=gamma, distribution=dist, m=width, steps=total)
                    trajectory += [dict(key, **point) for point in res.pop("history")]
                    rows.append(dict(key, n=n, batch_size=batch_size, ideal_weak_loss=ideal_weak_loss(p, width),
                                     m_over_n=width / n, inv_m=1 / width, seconds=round(sec, 1),
                                     ms_per_step=round(1000 * sec / total, 2), **res))
                    print(f"[toy {name}] {tag}: loss {res['loss']:.4g}  phi_half {res['phi_half']:.3f}  "
                          f"phi_one {res['phi_one']:.3f}  cos2 {res['mean_cos2_all']:.4f}  ({sec:.0f}s)", flush=True)
                    write_run(out, rows, fits, trajectory)
                used = [k for k, keep in zip(ms, fit_mask(gamma, dist, ms, fit_rule)) if keep]
                if len(used) >= 2:
                    losses = [r["loss"] for r in rows if r["gamma"] == gamma and r["distribution"] == dist
                              and r["steps"] == total and r["m"] in used]
                    fits.append(dict(gamma=gamma, distribution=dist, steps=total, fit_ms=" ".join(map(str, used)),
                                     **fit_alpha_m(used, losses)))
                    write_run(out, rows, fits, trajectory)
                    if fits_table:
                        record(str(out), fits_table)
    for f in fits:
        print(f"[toy {name}] alpha_m({f['distribution']}, gamma={f['gamma']:+g}, steps={f['steps']}) = "
              f"{f['alpha_m']:.3f} ± {f['se']:.3f}")
