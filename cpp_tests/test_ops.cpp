// A libtorch-only check that the fastsoftmax ops are registered and compute the right thing:
// each op is called through the dispatcher and compared with the same math in plain ATen.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <tuple>

namespace {

int failures = 0;

void expect_close(const at::Tensor& actual, const at::Tensor& expected, double tol,
                  const char* what) {
  const double err = (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
  if (err > tol) {
    std::printf("FAIL %s: max error %g > %g\n", what, err, tol);
    ++failures;
  } else {
    std::printf("ok   %s (max error %.2g)\n", what, err);
  }
}

using OptT = std::optional<at::Tensor>;

void full_softmax_matches_aten() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastsoftmax::full_softmax_ce", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                          const OptT&, const at::Tensor&,
                                                          const at::Tensor&, double)>();
  const int64_t B = 300, N = 1100, d = 16;
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto q = at::randn({B, d}, opts), w = at::randn({N, d}, opts), bias = at::randn({N}, opts);
  auto y = at::randint(0, N, {B, 1}, at::TensorOptions().dtype(at::kLong));
  auto tw = at::ones({B, 1}, opts);
  auto [loss, lse] = op.call(q, w, bias, y, tw, 0.5);
  auto logits = (at::mm(q, w.t()) + bias) / 0.5;
  auto expected_lse = at::logsumexp(logits, 1);
  auto expected = expected_lse - logits.gather(1, y).squeeze(1);
  expect_close(lse, expected_lse, 1e-9, "full_softmax_ce lse");
  expect_close(loss, expected, 1e-9, "full_softmax_ce loss");
}

void sampled_softmax_matches_aten() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastsoftmax::sampled_softmax_ce", "")
                .typed<std::tuple<at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                    const OptT&, const at::Tensor&, const OptT&, const OptT&, const OptT&, double,
                    bool)>();
  const int64_t B = 70, C = 600, d = 8;
  auto q = at::randn({B, d}), pos = at::randn({B, 1, d}), cand = at::randn({C, d});
  auto w = at::ones({B, 1});
  auto log_q = -at::rand({C});
  auto [loss, lse] = op.call(q, pos, cand, std::nullopt, std::nullopt, w, std::nullopt, log_q,
                             std::nullopt, 1.0, true);
  auto s_pos = (q * pos.squeeze(1)).sum(1, true);
  auto logits = at::cat({s_pos, at::mm(q, cand.t()) - log_q}, 1);
  auto expected = at::logsumexp(logits, 1) - s_pos.squeeze(1);
  expect_close(loss, expected, 1e-4, "sampled_softmax_ce loss (fp32)");
}

}  // namespace

int main() {
  at::manual_seed(0);
  full_softmax_matches_aten();
  sampled_softmax_matches_aten();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
