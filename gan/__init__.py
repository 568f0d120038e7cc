"""Pure PyTorch InfoGAN with a structural (Bayesian-network) regularizer.

Nothing here imports optuna, mlflow, pgmpy or structsearch: a graph arrives as a plain
mapping ``{q node: (parent nodes...)}``.
"""
