"""Eight schools (centred) as a Pyro model file, for the tests that load one by path."""

SCHOOLS = """
import torch, pyro, pyro.distributions as dist
y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])
sigma = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])
def model():
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)
"""
