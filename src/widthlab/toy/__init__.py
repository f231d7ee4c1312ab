"""The toy model of superposition of Liu, Liu & Gore (2025): `python -m train toy`.

model.py    y = ReLU(W Wᵀ x + b): forward, exact gradient, training loop, fits of L ∝ m^(−α_m), the `toy` command
data.py     sparse inputs x_i = Bernoulli(p_i)·U(0, 2) and the feature-frequency distributions
results.py  a run directory's files and the cross-run table docs/results/toy/fits.csv
            (`python -m widthlab.toy.results RUN_DIR`)

Apart from the LM toolkit: it shares only the signed row decay (interventions/signed_decay.py), the overlap
statistics (geometry.py) and the log-log fit (scaling/fit.py).
"""
