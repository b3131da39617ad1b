"""SIGReg (loss.sigreg_weight): the Epps-Pulley statistic and its random directions."""

import math

import torch

from model.jepa import Slices, epps_pulley


def test_a_standard_normal_scores_its_expected_value_whatever_the_batch():
    g = torch.Generator().manual_seed(0)
    expected = math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3)  # 1.06
    for n in (16, 256, 4096):
        stat = float(epps_pulley(torch.randn(n, 512, generator=g)))
        assert abs(stat - expected) < 0.15, (n, stat)


def test_the_statistic_sees_shape_scale_and_location_not_only_moments():
    g = torch.Generator().manual_seed(1)
    n = 4096
    normal = float(epps_pulley(torch.randn(n, 64, generator=g)))
    # The same mean and variance as a standard normal, another shape.
    uniform = float(epps_pulley(math.sqrt(3) * (2 * torch.rand(n, 64, generator=g) - 1)))
    wide = float(epps_pulley(2 * torch.randn(n, 64, generator=g)))
    shifted = float(epps_pulley(torch.randn(n, 64, generator=g) + 0.5))
    collapsed = float(epps_pulley(torch.zeros(n, 64)))
    assert normal < 1.5
    assert min(uniform, wide, shifted) > 5 * normal
    assert collapsed > max(uniform, wide, shifted)


def test_descending_it_spreads_a_collapsed_batch_into_a_gaussian():
    g = torch.Generator().manual_seed(2)
    z = (0.01 * torch.randn(256, 16, generator=g)).requires_grad_()
    slices = Slices(16, 64)
    opt = torch.optim.Adam([z], lr=0.05)
    first = None
    for _ in range(300):
        loss = epps_pulley(z @ slices(z.device))
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(epps_pulley(z.detach() @ Slices(16, 512, seed=9)(z.device)))
    assert first > 50 and final < 3
    std = z.detach().std(0)
    assert float(std.min()) > 0.7 and float(std.max()) < 1.3


def test_directions_are_unit_new_each_step_and_resume_from_the_state_dict():
    a = Slices(8, 5, seed=3)
    d1, d2 = a(torch.device("cpu")), a(torch.device("cpu"))
    assert d1.shape == (8, 5)
    assert torch.allclose(d1.norm(dim=0), torch.ones(5))
    assert not torch.equal(d1, d2)
    b = Slices(8, 5, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(torch.device("cpu")), b(torch.device("cpu")))
    c = Slices(8, 5, seed=3)
    assert torch.equal(c(torch.device("cpu")), d1)
