"""PAC-Bayes bounds on the error of a stochastic network centred on a trained replica, in the
manner of Dziugaite and Roy (2017, "Computing nonvacuous generalization bounds for deep
(stochastic) neural networks with many more parameters than training data"): ``kl`` holds the
bounds' arithmetic, ``posterior`` optimizes one replica's Gaussian posterior and certifies it."""
