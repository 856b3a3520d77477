// CPU (C++/OpenMP) front-to-back Gaussian blending with forward and backward passes.
//
// Same semantics as 3DGS's CUDA rasterizer (forward.cu renderCUDA / backward.cu renderCUDA) and as
// lumenkit.gsir.rasterize.blend_reference:
//   per pixel, over the depth-sorted Gaussians whose 16x16 tile rectangle contains the pixel's tile,
//   power = -0.5 (a dx^2 + c dy^2) - b dx dy with d = mean2d - pixel_centre (pixel centre j + 0.5),
//   alpha = min(0.99, o exp(power)); skip power > 0 or alpha < 1/255; stop before the Gaussian that
//   would make T < 1e-4; out += alpha T channel; T *= 1 - alpha.
// The loops are "Gaussian outer, pixel inner" per tile (as a CUDA block walks its list), restricted to
// the pixels of the Gaussian's exact alpha >= 1/255 ellipse bounding box (plus a safety margin), so a
// Gaussian costs only the pixels it can touch. Tiles run in parallel (OpenMP). Backward walks each
// tile's list back to front, reconstructing T by division as 3DGS, writes per-(tile, Gaussian) entry
// gradients without races, and the caller reduces them per Gaussian with index_add.
// ATen + torch's pybind11 casters only: torch/extension.h would pull in the whole C++ frontend and
// double the build time of this extension.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int TILE = 16;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double ALPHA_MAX = 0.99;
constexpr double T_MIN = 1e-4;
constexpr int PREFETCH = 8;  // entries ahead

int num_threads() {
#ifdef _OPENMP
  return std::max(1, at::get_num_threads());
#else
  return 1;
#endif
}

struct Binning {
  std::vector<int64_t> offsets;   // [n_tiles + 1] start of each tile's list
  std::vector<int32_t> ids;       // [L] depth rank k per entry (Gaussian order[k]), front to back within each tile
  std::vector<int64_t> gstart;    // [M + 1] per depth-order rank k: start into by_gauss
  std::vector<int64_t> by_gauss;  // [L] entry positions grouped by Gaussian (for the gradient reduction)
};

Binning bin_gaussians(const at::Tensor& order, const at::Tensor& rects, int gx, int gy) {
  const int64_t M = order.size(0);
  const int64_t* ord = order.data_ptr<int64_t>();
  const int32_t* rc = rects.data_ptr<int32_t>();
  Binning b;
  b.offsets.assign((size_t)gx * gy + 1, 0);
  for (int64_t k = 0; k < M; ++k) {
    const int32_t* r = rc + 4 * ord[k];
    for (int ty = r[2]; ty < r[3]; ++ty)
      for (int tx = r[0]; tx < r[1]; ++tx) b.offsets[(size_t)ty * gx + tx + 1]++;
  }
  for (size_t t = 1; t < b.offsets.size(); ++t) b.offsets[t] += b.offsets[t - 1];
  b.ids.resize(b.offsets.back());
  b.by_gauss.resize(b.offsets.back());
  b.gstart.assign(M + 1, 0);
  std::vector<int64_t> fill(b.offsets.begin(), b.offsets.end() - 1);
  int64_t it = 0;
  for (int64_t k = 0; k < M; ++k) {
    const int32_t* r = rc + 4 * ord[k];
    b.gstart[k] = it;
    for (int ty = r[2]; ty < r[3]; ++ty)
      for (int tx = r[0]; tx < r[1]; ++tx) {
        const int64_t e = fill[(size_t)ty * gx + tx]++;
        b.ids[e] = (int32_t)k;
        b.by_gauss[it++] = e;
      }
  }
  b.gstart[M] = it;
  return b;
}

// Per-Gaussian data for the tile loops, computed once per call (not per tile entry).
template <typename scalar_t>
struct Splat {
  scalar_t mx, my, a, b, c, o, log_thr;  // log_thr = log(ALPHA_MIN / o)
  int x0, x1, y0, y1;                    // pixel range (start inclusive, end exclusive) where alpha >= 1/255 is possible
  bool live;                             // false: can never reach alpha >= 1/255
};

// Per depth rank k (Gaussian order[k]), so that the tile loops, whose lists are in increasing k, read
// the splats and channels nearly sequentially instead of at random (a cache miss per entry otherwise).
// Pixel range where alpha >= 1/255 is possible: the ellipse d^T conic d <= 2 log(255 o), widened by a
// small margin so that rounding can never drop a pixel the reference would keep.
template <typename scalar_t>
void make_splats(const scalar_t* m2d, const scalar_t* con, const scalar_t* op, const int64_t* ord, int64_t M, int W,
                 int H, std::vector<Splat<scalar_t>>& out) {
  out.resize(M);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t k = 0; k < M; ++k) {
    const int64_t g = ord[k];
    Splat<scalar_t>& s = out[k];
    s.mx = m2d[2 * g];
    s.my = m2d[2 * g + 1];
    s.a = con[3 * g];
    s.b = con[3 * g + 1];
    s.c = con[3 * g + 2];
    s.o = op[g];
    const double o = (double)s.o;
    s.live = o >= ALPHA_MIN * (1.0 - 1e-6);  // alpha <= o
    s.log_thr = s.live ? (scalar_t)std::log(ALPHA_MIN / o) : scalar_t(0);
    s.x0 = 0; s.x1 = W; s.y0 = 0; s.y1 = H;
    const double a = s.a, b = s.b, c = s.c, det = a * c - b * b;
    if (s.live && det > 0 && a > 0 && std::isfinite(det)) {
      const double q = std::max(0.0, 2.0 * std::log(o / ALPHA_MIN)) * (1.0 + 1e-4) + 1e-4;
      const double hx = std::sqrt(q * c / det) + 1e-3, hy = std::sqrt(q * a / det) + 1e-3;
      // pixel j has its centre at j + 0.5: need |mx - (j + 0.5)| <= hx
      auto clampi = [](double v, int hi) { return (int)std::max<double>(0, std::min<double>(hi, v)); };
      s.x0 = clampi(std::ceil((double)s.mx - hx - 0.5), W);
      s.x1 = clampi(std::floor((double)s.mx + hx - 0.5) + 1.0, W);
      s.y0 = clampi(std::ceil((double)s.my - hy - 0.5), H);
      s.y1 = clampi(std::floor((double)s.my + hy - 0.5) + 1.0, H);
    }
  }
}

// The Gaussian's pixel range clipped to the tile [px0, px1) x [py0, py1); false if empty.
template <typename scalar_t>
inline bool clip_to_tile(const Splat<scalar_t>& s, int px0, int px1, int py0, int py1, int& x0, int& x1, int& y0,
                         int& y1) {
  if (!s.live) return false;
  x0 = std::max(s.x0, px0); x1 = std::min(s.x1, px1);
  y0 = std::max(s.y0, py0); y1 = std::min(s.y1, py1);
  return x1 > x0 && y1 > y0;
}

template <typename scalar_t>
inline bool eval_alpha(const Splat<scalar_t>& s, scalar_t px, scalar_t py, scalar_t& dx, scalar_t& dy, scalar_t& G,
                       scalar_t& alpha) {
  dx = s.mx - px;
  dy = s.my - py;
  const scalar_t power = scalar_t(-0.5) * (s.a * dx * dx + s.c * dy * dy) - s.b * dx * dy;
  if (power > 0) return false;
  if (power < s.log_thr - scalar_t(1e-3)) return false;  // surely alpha < 1/255, skip the exp
  G = std::exp(power);
  alpha = std::min(scalar_t(ALPHA_MAX), s.o * G);
  return alpha >= scalar_t(ALPHA_MIN);
}

template <typename scalar_t>
void forward_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                  const at::Tensor& channels, const at::Tensor& order, const Binning& bins, int W, int H,
                  at::Tensor& out,
                  at::Tensor& final_T, at::Tensor& n_contrib, at::Tensor& argmax, bool want_argmax) {
  const int C = (int)channels.size(1);
  const int gx = (W + TILE - 1) / TILE, gy = (H + TILE - 1) / TILE;
  const scalar_t* m2d = means2d.data_ptr<scalar_t>();
  const scalar_t* con = conics.data_ptr<scalar_t>();
  const scalar_t* op = opac.data_ptr<scalar_t>();
  const scalar_t* ch = channels.data_ptr<scalar_t>();
  scalar_t* o_out = out.data_ptr<scalar_t>();
  scalar_t* o_T = final_T.data_ptr<scalar_t>();
  int32_t* o_n = n_contrib.data_ptr<int32_t>();
  int64_t* o_arg = want_argmax ? argmax.data_ptr<int64_t>() : nullptr;
  const int n_tiles = gx * gy;
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<Splat<scalar_t>> splats;
  make_splats(m2d, con, op, ord, order.size(0), W, H, splats);

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int tx = tile % gx, ty = tile / gx;
    const int px0 = tx * TILE, px1 = std::min(W, px0 + TILE);
    const int py0 = ty * TILE, py1 = std::min(H, py0 + TILE);
    const int tw = px1 - px0, npix = tw * (py1 - py0);
    std::vector<scalar_t> T(npix, scalar_t(1)), acc((size_t)npix * C, scalar_t(0)), wmax(npix, scalar_t(0));
    std::vector<int32_t> last(npix, 0);
    std::vector<int64_t> arg(npix, -1);
    std::vector<char> done(npix, 0);
    int n_done = 0;
    const int64_t beg = bins.offsets[tile], end = bins.offsets[tile + 1];
    int x0, x1, y0, y1;
    for (int64_t e = beg; e < end && n_done < npix; ++e) {
      const int g = bins.ids[e];  // depth rank
      if (e + PREFETCH < end) {  // the tile's list is sparse in rank: hide the cache misses
        const int gn = bins.ids[e + PREFETCH];
        __builtin_prefetch(&splats[gn]);
        __builtin_prefetch(ch + (size_t)gn * C);
      }
      const Splat<scalar_t>& s = splats[g];
      if (!clip_to_tile(s, px0, px1, py0, py1, x0, x1, y0, y1)) continue;
      const scalar_t* cg = ch + (size_t)g * C;
      for (int y = y0; y < y1; ++y) {
        const scalar_t py = scalar_t(y) + scalar_t(0.5);
        for (int x = x0; x < x1; ++x) {
          const int p = (y - py0) * tw + (x - px0);
          if (done[p]) continue;
          scalar_t dx, dy, G, alpha;
          if (!eval_alpha(s, scalar_t(x) + scalar_t(0.5), py, dx, dy, G, alpha)) continue;
          const scalar_t test_T = T[p] * (scalar_t(1) - alpha);
          if (test_T < scalar_t(T_MIN)) {
            done[p] = 1;
            ++n_done;
            continue;
          }
          const scalar_t w = alpha * T[p];
          scalar_t* ap = acc.data() + (size_t)p * C;
          for (int k = 0; k < C; ++k) ap[k] += w * cg[k];
          if (w > wmax[p]) {
            wmax[p] = w;
            arg[p] = ord[g];
          }
          T[p] = test_T;
          last[p] = (int32_t)(e - beg + 1);
        }
      }
    }
    for (int y = py0; y < py1; ++y)
      for (int x = px0; x < px1; ++x) {
        const int p = (y - py0) * tw + (x - px0);
        const size_t pix = (size_t)y * W + x;
        for (int k = 0; k < C; ++k) o_out[(size_t)k * H * W + pix] = acc[(size_t)p * C + k];
        o_T[pix] = T[p];
        o_n[pix] = last[p];
        if (o_arg) o_arg[pix] = arg[p];
      }
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                   const at::Tensor& channels, const at::Tensor& order, const at::Tensor& offsets,
                   const at::Tensor& ids, int W, int H,
                   const at::Tensor& final_T, const at::Tensor& n_contrib, const at::Tensor& grad_out,
                   int NA, at::Tensor& entry_grad) {
  const int C = (int)channels.size(1);  // the first NA channels carry the alpha gradient
  const int G6 = 6 + C;  // [dmx, dmy, da, db, dc, do, dch...]
  const int gx = (W + TILE - 1) / TILE, gy = (H + TILE - 1) / TILE;
  const scalar_t* m2d = means2d.data_ptr<scalar_t>();
  const scalar_t* con = conics.data_ptr<scalar_t>();
  const scalar_t* op = opac.data_ptr<scalar_t>();
  const scalar_t* ch = channels.data_ptr<scalar_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* idp = ids.data_ptr<int32_t>();
  const scalar_t* fT = final_T.data_ptr<scalar_t>();
  const int32_t* nc = n_contrib.data_ptr<int32_t>();
  const scalar_t* go = grad_out.data_ptr<scalar_t>();
  scalar_t* eg = entry_grad.data_ptr<scalar_t>();
  const int n_tiles = gx * gy;
  std::vector<Splat<scalar_t>> splats;
  make_splats(m2d, con, op, order.data_ptr<int64_t>(), order.size(0), W, H, splats);

#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int tx = tile % gx, ty = tile / gx;
    const int px0 = tx * TILE, px1 = std::min(W, px0 + TILE);
    const int py0 = ty * TILE, py1 = std::min(H, py0 + TILE);
    const int tw = px1 - px0, npix = tw * (py1 - py0);
    std::vector<scalar_t> T(npix), dpix((size_t)npix * C), accum((size_t)npix * NA, scalar_t(0)), last_alpha(npix, 0);
    std::vector<int32_t> last_g(npix, -1), ncon(npix);
    std::vector<scalar_t> gl(G6);
    int max_n = 0;
    for (int y = py0; y < py1; ++y)
      for (int x = px0; x < px1; ++x) {
        const int p = (y - py0) * tw + (x - px0);
        const size_t pix = (size_t)y * W + x;
        T[p] = fT[pix];
        ncon[p] = nc[pix];
        max_n = std::max(max_n, ncon[p]);
        for (int k = 0; k < C; ++k) dpix[(size_t)p * C + k] = go[(size_t)k * H * W + pix];
      }
    const int64_t beg = off[tile];
    std::fill(eg + (size_t)beg * G6, eg + (size_t)off[tile + 1] * G6, scalar_t(0));  // entries not reached stay 0
    int x0, x1, y0, y1;
    for (int64_t e = beg + max_n - 1; e >= beg; --e) {
      const int g = idp[e];  // depth rank
      if (e - PREFETCH >= beg) {
        const int gn = idp[e - PREFETCH];
        __builtin_prefetch(&splats[gn]);
        __builtin_prefetch(ch + (size_t)gn * C);
      }
      const Splat<scalar_t>& s = splats[g];
      if (!clip_to_tile(s, px0, px1, py0, py1, x0, x1, y0, y1)) continue;
      const scalar_t* cg = ch + (size_t)g * C;
      scalar_t* ge = gl.data();  // local accumulators, stored to entry e below
      std::fill(gl.begin(), gl.end(), scalar_t(0));
      const int rank = (int)(e - beg);
      for (int y = y0; y < y1; ++y) {
        const scalar_t py = scalar_t(y) + scalar_t(0.5);
        for (int x = x0; x < x1; ++x) {
          const int p = (y - py0) * tw + (x - px0);
          if (rank >= ncon[p]) continue;
          scalar_t dx, dy, G, alpha;
          if (!eval_alpha(s, scalar_t(x) + scalar_t(0.5), py, dx, dy, G, alpha)) continue;
          T[p] = T[p] / (scalar_t(1) - alpha);
          const scalar_t w = alpha * T[p];
          scalar_t* acp = accum.data() + (size_t)p * NA;
          const scalar_t* dp = dpix.data() + (size_t)p * C;
          const scalar_t la = last_alpha[p];
          const scalar_t* lc = last_g[p] >= 0 ? ch + (size_t)last_g[p] * C : nullptr;
          scalar_t dL_dalpha = 0;
          for (int k = 0; k < NA; ++k) {
            if (lc) acp[k] = la * lc[k] + (scalar_t(1) - la) * acp[k];
            dL_dalpha += (cg[k] - acp[k]) * dp[k];
          }
          for (int k = 0; k < C; ++k) ge[6 + k] += w * dp[k];
          dL_dalpha *= T[p];
          last_alpha[p] = alpha;
          last_g[p] = g;
          if (s.o * G > scalar_t(ALPHA_MAX)) continue;  // clamped: no gradient to o or G
          const scalar_t dL_dG = s.o * dL_dalpha;
          const scalar_t gdp = G * dL_dG;  // dL/dpower
          ge[0] += gdp * (-s.a * dx - s.b * dy);
          ge[1] += gdp * (-s.c * dy - s.b * dx);
          ge[2] += gdp * scalar_t(-0.5) * dx * dx;
          ge[3] += gdp * (-dx * dy);
          ge[4] += gdp * scalar_t(-0.5) * dy * dy;
          ge[5] += G * dL_dalpha;
        }
      }
      std::copy(gl.begin(), gl.end(), eg + (size_t)e * G6);
    }
  }
}

// Sum the per-(tile, Gaussian) entry gradients per Gaussian: parallel over Gaussians, no races.
template <typename scalar_t>
void reduce_entries(const at::Tensor& entry_grad, at::Tensor& g, const at::Tensor& order,
                    const at::Tensor& gstart, const at::Tensor& by_gauss) {
  const int G6 = (int)entry_grad.size(1);
  const int64_t M = order.size(0);
  const scalar_t* eg = entry_grad.data_ptr<scalar_t>();
  scalar_t* gp = g.data_ptr<scalar_t>();
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* gs = gstart.data_ptr<int64_t>();
  const int64_t* bg = by_gauss.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t k = 0; k < M; ++k) {
    scalar_t* dst = gp + (size_t)ord[k] * G6;
    for (int64_t i = gs[k]; i < gs[k + 1]; ++i) {
      const scalar_t* src = eg + (size_t)bg[i] * G6;
      for (int j = 0; j < G6; ++j) dst[j] += src[j];
    }
  }
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                  const at::Tensor& channels) {
  TORCH_CHECK(means2d.device().is_cpu(), "cpu rasterizer: tensors must be on the CPU");
  TORCH_CHECK(means2d.is_contiguous() && conics.is_contiguous() && opac.is_contiguous() && channels.is_contiguous(),
              "cpu rasterizer: inputs must be contiguous");
  TORCH_CHECK(conics.scalar_type() == means2d.scalar_type() && opac.scalar_type() == means2d.scalar_type() &&
                  channels.scalar_type() == means2d.scalar_type(),
              "cpu rasterizer: all float inputs must share one dtype");
}

}  // namespace

// Returns [out [C,H,W], final_T [H,W], n_contrib [H,W] int32, argmax [H,W] int64, offsets [T+1] int64, ids [L] int32,
//          gstart [M+1] int64, by_gauss [L] int64]
std::vector<at::Tensor> blend_forward(at::Tensor means2d, at::Tensor conics, at::Tensor opac,
                                         at::Tensor channels, at::Tensor order, at::Tensor rects, int64_t W,
                                         int64_t H, bool want_argmax) {
  check_inputs(means2d, conics, opac, channels);
  order = order.to(at::kLong).contiguous();
  rects = rects.to(at::kInt).contiguous();
  const int gx = (int)((W + TILE - 1) / TILE), gy = (int)((H + TILE - 1) / TILE);
  Binning bins = bin_gaussians(order, rects, gx, gy);
  const int64_t C = channels.size(1);
  auto fopt = means2d.options();
  auto out = at::zeros({C, H, W}, fopt);
  auto final_T = at::ones({H, W}, fopt);
  auto n_contrib = at::zeros({H, W}, fopt.dtype(at::kInt));
  auto argmax = at::full({H, W}, -1, fopt.dtype(at::kLong));
  auto chs = channels.index_select(0, order).contiguous();  // channels by depth rank
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "blend_forward", [&] {
    forward_impl<scalar_t>(means2d, conics, opac, chs, order, bins, (int)W, (int)H, out, final_T, n_contrib, argmax,
                           want_argmax);
  });
  auto offsets = at::from_blob(bins.offsets.data(), {(int64_t)bins.offsets.size()}, at::kLong).clone();
  auto ids = at::from_blob(bins.ids.data(), {(int64_t)bins.ids.size()}, at::kInt).clone();
  auto gstart = at::from_blob(bins.gstart.data(), {(int64_t)bins.gstart.size()}, at::kLong).clone();
  auto by_gauss = at::from_blob(bins.by_gauss.data(), {(int64_t)bins.by_gauss.size()}, at::kLong).clone();
  return {out, final_T, n_contrib, argmax, offsets, ids, gstart, by_gauss};
}

// Returns [grad_means2d [N,2], grad_conics [N,3], grad_opac [N], grad_channels [N,C]]. Only the first n_alpha
// channels back-propagate to means2d / conics / opac (GS-IR's PBR maps do not move the geometry); the others get
// their channel gradient only.
std::vector<at::Tensor> blend_backward(at::Tensor means2d, at::Tensor conics, at::Tensor opac,
                                          at::Tensor channels, at::Tensor offsets, at::Tensor ids, int64_t W,
                                          int64_t H, at::Tensor final_T, at::Tensor n_contrib,
                                          at::Tensor grad_out, at::Tensor order, at::Tensor gstart,
                                          at::Tensor by_gauss, int64_t n_alpha) {
  check_inputs(means2d, conics, opac, channels);
  TORCH_CHECK(n_alpha >= 0 && n_alpha <= channels.size(1), "cpu rasterizer: n_alpha out of range");
  grad_out = grad_out.to(means2d.scalar_type()).contiguous();
  order = order.to(at::kLong).contiguous();
  const int64_t N = means2d.size(0), C = channels.size(1), L = ids.size(0), M = order.size(0);
  const int G6 = (int)(6 + C);
  auto entry_grad = at::empty({L, G6}, means2d.options());
  auto g = at::zeros({N, G6}, means2d.options());
  auto chs = channels.index_select(0, order).contiguous();  // channels by depth rank
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "blend_backward", [&] {
    backward_impl<scalar_t>(means2d, conics, opac, chs, order, offsets, ids, (int)W, (int)H, final_T, n_contrib,
                            grad_out, (int)n_alpha, entry_grad);
    reduce_entries<scalar_t>(entry_grad, g, order, gstart, by_gauss);
  });
  return {g.narrow(1, 0, 2).contiguous(), g.narrow(1, 2, 3).contiguous(), g.select(1, 5).contiguous(),
          g.narrow(1, 6, C).contiguous()};
}

#include "preprocess_cpu.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("preprocess_forward", &preprocess_forward, "EWA projection + SH colour of 3D Gaussians, forward (CPU)");
  m.def("preprocess_backward", &preprocess_backward, "EWA projection + SH colour of 3D Gaussians, backward (CPU)");
  m.def("blend_forward", &blend_forward, "Gaussian front-to-back blending, forward (CPU)");
  m.def("blend_backward", &blend_backward, "Gaussian front-to-back blending, backward (CPU)");
}
