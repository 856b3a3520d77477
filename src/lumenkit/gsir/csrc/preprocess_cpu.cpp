// CPU (C++/OpenMP) fused preprocessing of 3D Gaussians: EWA projection and SH colour, forward and
// backward. Same maths as lumenkit.gsir.rasterize.project_gaussians and lumenkit.gsir.sh.sh_to_color
// (3DGS preprocessCUDA / computeCov2D / computeCov3D / computeColorFromSH), one pass over the
// Gaussians instead of ~150 small torch ops; the torch versions are the reference in the tests.
// Included by rasterize_cpu.cpp (one extension module).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace preprocess {

constexpr double SH_C0 = 0.28209479177387814;
constexpr double SH_C1 = 0.4886025119029199;
constexpr double SH_C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                             0.5462742152960396};
constexpr double SH_C3[7] = {-0.5900435899266435, 2.890611442640554,  -0.4570457994644658, 0.3731763325901154,
                             -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

// SH basis values b[k] and their gradients db[k][3] w.r.t. the unit direction (x, y, z).
template <typename T>
inline void sh_basis(int degree, T x, T y, T z, T* b, T (*db)[3]) {
  b[0] = T(SH_C0);
  if (db) db[0][0] = db[0][1] = db[0][2] = 0;
  if (degree < 1) return;
  b[1] = T(-SH_C1) * y;
  b[2] = T(SH_C1) * z;
  b[3] = T(-SH_C1) * x;
  if (db) {
    T g[3][3] = {{0, T(-SH_C1), 0}, {0, 0, T(SH_C1)}, {T(-SH_C1), 0, 0}};
    for (int k = 0; k < 3; ++k) for (int a = 0; a < 3; ++a) db[1 + k][a] = g[k][a];
  }
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = T(SH_C2[0]) * xy;
  b[5] = T(SH_C2[1]) * yz;
  b[6] = T(SH_C2[2]) * (T(2) * zz - xx - yy);
  b[7] = T(SH_C2[3]) * xz;
  b[8] = T(SH_C2[4]) * (xx - yy);
  if (db) {
    T g[5][3] = {{y, x, 0}, {0, z, y}, {T(-2) * x, T(-2) * y, T(4) * z}, {z, 0, x}, {T(2) * x, T(-2) * y, 0}};
    for (int k = 0; k < 5; ++k) for (int a = 0; a < 3; ++a) db[4 + k][a] = T(SH_C2[k]) * g[k][a];
  }
  if (degree < 3) return;
  b[9] = T(SH_C3[0]) * y * (T(3) * xx - yy);
  b[10] = T(SH_C3[1]) * xy * z;
  b[11] = T(SH_C3[2]) * y * (T(4) * zz - xx - yy);
  b[12] = T(SH_C3[3]) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = T(SH_C3[4]) * x * (T(4) * zz - xx - yy);
  b[14] = T(SH_C3[5]) * z * (xx - yy);
  b[15] = T(SH_C3[6]) * x * (xx - T(3) * yy);
  if (db) {
    T g[7][3] = {{T(6) * xy, T(3) * xx - T(3) * yy, 0},
                 {yz, xz, xy},
                 {T(-2) * xy, T(4) * zz - xx - T(3) * yy, T(8) * yz},
                 {T(-6) * xz, T(-6) * yz, T(6) * zz - T(3) * xx - T(3) * yy},
                 {T(4) * zz - T(3) * xx - yy, T(-2) * xy, T(8) * xz},
                 {T(2) * xz, T(-2) * yz, xx - yy},
                 {T(3) * xx - T(3) * yy, T(-6) * xy, 0}};
    for (int k = 0; k < 7; ++k) for (int a = 0; a < 3; ++a) db[9 + k][a] = T(SH_C3[k]) * g[k][a];
  }
}

template <typename T>
inline void quat_to_rot(const T* q_in, T q[4], T& qn, T R[3][3]) {
  qn = std::max(T(1e-12), std::sqrt(q_in[0] * q_in[0] + q_in[1] * q_in[1] + q_in[2] * q_in[2] + q_in[3] * q_in[3]));
  for (int i = 0; i < 4; ++i) q[i] = q_in[i] / qn;
  const T w = q[0], x = q[1], y = q[2], z = q[3];
  R[0][0] = 1 - 2 * (y * y + z * z); R[0][1] = 2 * (x * y - w * z); R[0][2] = 2 * (x * z + w * y);
  R[1][0] = 2 * (x * y + w * z); R[1][1] = 1 - 2 * (x * x + z * z); R[1][2] = 2 * (y * z - w * x);
  R[2][0] = 2 * (x * z - w * y); R[2][1] = 2 * (y * z + w * x); R[2][2] = 1 - 2 * (x * x + y * y);
}

struct Cam {
  double V[3][3], t[3], fx, fy, cx, cy, lxp, lxn, lyp, lyn, near, far;
  int W, H;
};

// Intermediate values of one Gaussian's projection (recomputed in backward).
template <typename T>
struct Proj {
  T p[3], z, u, v;        // view-space point; u, v = clamped x/z, y/z used by the Jacobian
  bool cu, cv;            // clamped?
  T J[2][3], Tm[2][3];    // Jacobian and T = J V
  T q[4], qn, R[3][3], M[3][3], S[3][3];
  T a, b, c, det;
  bool ok;
};

template <typename T>
inline void project_one(const Cam& cam, const T* m, const T* q_in, const T* s, Proj<T>& P) {
  for (int i = 0; i < 3; ++i)
    P.p[i] = T(cam.V[i][0]) * m[0] + T(cam.V[i][1]) * m[1] + T(cam.V[i][2]) * m[2] + T(cam.t[i]);
  const T z = P.p[2];
  const bool inf = z > T(cam.near) && z < T(cam.far);
  P.z = inf ? z : T(1);
  const T ux = P.p[0] / P.z, uy = P.p[1] / P.z;
  P.u = std::min(std::max(ux, T(-cam.lxn)), T(cam.lxp));
  P.v = std::min(std::max(uy, T(-cam.lyn)), T(cam.lyp));
  P.cu = P.u != ux;
  P.cv = P.v != uy;
  const T fx = T(cam.fx), fy = T(cam.fy), zz = P.z;
  // J02 = -fx * tx / z^2 with tx = z * u  ->  -fx * u / z
  P.J[0][0] = fx / zz; P.J[0][1] = 0; P.J[0][2] = -fx * P.u / zz;
  P.J[1][0] = 0; P.J[1][1] = fy / zz; P.J[1][2] = -fy * P.v / zz;
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k) P.Tm[r][k] = P.J[r][0] * T(cam.V[0][k]) + P.J[r][1] * T(cam.V[1][k]) + P.J[r][2] * T(cam.V[2][k]);
  quat_to_rot(q_in, P.q, P.qn, P.R);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.M[i][j] = P.R[i][j] * s[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.S[i][j] = P.M[i][0] * P.M[j][0] + P.M[i][1] * P.M[j][1] + P.M[i][2] * P.M[j][2];
  T TS[2][3];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k) TS[r][k] = P.Tm[r][0] * P.S[0][k] + P.Tm[r][1] * P.S[1][k] + P.Tm[r][2] * P.S[2][k];
  const T c00 = TS[0][0] * P.Tm[0][0] + TS[0][1] * P.Tm[0][1] + TS[0][2] * P.Tm[0][2];
  const T c01 = TS[0][0] * P.Tm[1][0] + TS[0][1] * P.Tm[1][1] + TS[0][2] * P.Tm[1][2];
  const T c11 = TS[1][0] * P.Tm[1][0] + TS[1][1] * P.Tm[1][1] + TS[1][2] * P.Tm[1][2];
  P.a = c00 + T(0.3);
  P.b = c01;
  P.c = c11 + T(0.3);
  P.det = P.a * P.c - P.b * P.b;
  P.ok = inf && P.det > 0;
}

constexpr int TILE = 16;

template <typename T>
void forward_impl(const Cam& cam, const T* means, const T* quats, const T* scales, const T* sh, int K, int degree,
                  const T* campos, int64_t N, T* means2d, T* conics, T* depths, int32_t* radii, int32_t* rects,
                  T* colors) {
  const int gx = (cam.W + TILE - 1) / TILE, gy = (cam.H + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(std::max(1, at::get_num_threads()))
  for (int64_t n = 0; n < N; ++n) {
    Proj<T> P;
    project_one(cam, means + 3 * n, quats + 4 * n, scales + 3 * n, P);
    const T dets = P.ok ? P.det : T(1);
    conics[3 * n] = P.c / dets;
    conics[3 * n + 1] = -P.b / dets;
    conics[3 * n + 2] = P.a / dets;
    const T mx = T(cam.fx) * P.p[0] / P.z + T(cam.cx), my = T(cam.fy) * P.p[1] / P.z + T(cam.cy);
    means2d[2 * n] = mx;
    means2d[2 * n + 1] = my;
    depths[n] = P.p[2];
    int32_t r = 0;
    int32_t rc[4] = {0, 0, 0, 0};
    if (P.ok) {
      const T mid = T(0.5) * (P.a + P.c);
      const T lam = mid + std::sqrt(std::max(mid * mid - P.det, T(0.1)));
      const T rad = std::ceil(T(3) * std::sqrt(lam));
      if (std::isfinite((double)rad) && std::isfinite((double)mx) && std::isfinite((double)my)) {
        auto clampi = [](double v, int hi) { return (int32_t)std::min<double>(hi, std::max<double>(0, v)); };
        rc[0] = clampi(std::floor((mx - rad) / T(TILE)), gx);
        rc[1] = clampi(std::floor((mx + rad) / T(TILE)) + 1, gx);
        rc[2] = clampi(std::floor((my - rad) / T(TILE)), gy);
        rc[3] = clampi(std::floor((my + rad) / T(TILE)) + 1, gy);
        if (rc[1] > rc[0] && rc[3] > rc[2]) r = (int32_t)rad;
      }
    }
    radii[n] = r;
    for (int i = 0; i < 4; ++i) rects[4 * n + i] = r > 0 ? rc[i] : 0;
    if (sh) {
      T d[3] = {means[3 * n] - campos[0], means[3 * n + 1] - campos[1], means[3 * n + 2] - campos[2]};
      const T dn = std::max(T(1e-12), std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]));
      T b[16];
      sh_basis<T>(degree, d[0] / dn, d[1] / dn, d[2] / dn, b, nullptr);
      const int nb = (degree + 1) * (degree + 1);
      for (int ch = 0; ch < 3; ++ch) {
        T acc = 0;
        for (int k = 0; k < nb; ++k) acc += b[k] * sh[((size_t)n * K + k) * 3 + ch];
        colors[3 * n + ch] = std::max(acc + T(0.5), T(0));
      }
    }
  }
}

template <typename T>
void backward_impl(const Cam& cam, const T* means, const T* quats, const T* scales, const T* sh, int K, int degree,
                   const T* campos, int64_t N, const int32_t* radii, const T* g_m2d, const T* g_con, const T* g_dep,
                   const T* g_col, T* d_means, T* d_quats, T* d_scales, T* d_sh) {
#pragma omp parallel for schedule(static) num_threads(std::max(1, at::get_num_threads()))
  for (int64_t n = 0; n < N; ++n) {
    if (d_sh) std::fill(d_sh + (size_t)n * K * 3, d_sh + (size_t)(n + 1) * K * 3, T(0));
    if (radii[n] <= 0) {  // culled: the blend gives it no gradient
      std::fill(d_means + 3 * n, d_means + 3 * n + 3, T(0));
      std::fill(d_quats + 4 * n, d_quats + 4 * n + 4, T(0));
      std::fill(d_scales + 3 * n, d_scales + 3 * n + 3, T(0));
      continue;
    }
    Proj<T> P;
    const T* m = means + 3 * n;
    project_one(cam, m, quats + 4 * n, scales + 3 * n, P);
    const T fx = T(cam.fx), fy = T(cam.fy), z = P.z;
    // conic (A, B, C) = (c, -b, a) / det
    const T gA = g_con[3 * n], gB = g_con[3 * n + 1], gC = g_con[3 * n + 2];
    const T a = P.a, b = P.b, c = P.c, d2 = P.det * P.det;
    const T ga = (-c * c * gA + b * c * gB - b * b * gC) / d2;
    const T gb = (T(2) * b * c * gA + (-P.det - T(2) * b * b) * gB + T(2) * a * b * gC) / d2;
    const T gc = (-b * b * gA + a * b * gB - a * a * gC) / d2;
    const T Gs[2][2] = {{ga, T(0.5) * gb}, {T(0.5) * gb, gc}};
    // cov = Tm S Tm^T: dL/dS = Tm^T Gs Tm, dL/dTm = 2 Gs Tm S
    T GT[2][3];
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 3; ++k) GT[r][k] = Gs[r][0] * P.Tm[0][k] + Gs[r][1] * P.Tm[1][k];
    T dS[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) dS[i][j] = P.Tm[0][i] * GT[0][j] + P.Tm[1][i] * GT[1][j];
    T dTm[2][3];
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 3; ++k)
        dTm[r][k] = T(2) * (GT[r][0] * P.S[0][k] + GT[r][1] * P.S[1][k] + GT[r][2] * P.S[2][k]);
    // Tm = J V -> dJ = dTm V^T
    T dJ[2][3];
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 3; ++k)
        dJ[r][k] = dTm[r][0] * T(cam.V[k][0]) + dTm[r][1] * T(cam.V[k][1]) + dTm[r][2] * T(cam.V[k][2]);
    // J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]]
    T gz = -fx / (z * z) * dJ[0][0] - fy / (z * z) * dJ[1][1] + fx * P.u / (z * z) * dJ[0][2] + fy * P.v / (z * z) * dJ[1][2];
    const T gu = -fx / z * dJ[0][2], gv = -fy / z * dJ[1][2];
    T gp[3] = {0, 0, 0};
    if (!P.cu) { gp[0] += gu / z; gz += -gu * P.p[0] / (z * z); }
    if (!P.cv) { gp[1] += gv / z; gz += -gv * P.p[1] / (z * z); }
    // means2d = (fx x / z + cx, fy y / z + cy); depth = z
    const T gmx = g_m2d[2 * n], gmy = g_m2d[2 * n + 1];
    gp[0] += fx / z * gmx;
    gp[1] += fy / z * gmy;
    gz += -fx * P.p[0] / (z * z) * gmx - fy * P.p[1] / (z * z) * gmy + g_dep[n];
    gp[2] += gz;
    T dm[3];
    for (int k = 0; k < 3; ++k) dm[k] = T(cam.V[0][k]) * gp[0] + T(cam.V[1][k]) * gp[1] + T(cam.V[2][k]) * gp[2];
    // S = M M^T (dS symmetric) -> dM = 2 dS M; M = R diag(s)
    T dM[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) dM[i][j] = T(2) * (dS[i][0] * P.M[0][j] + dS[i][1] * P.M[1][j] + dS[i][2] * P.M[2][j]);
    const T* s = scales + 3 * n;
    T G[3][3];
    for (int j = 0; j < 3; ++j) {
      d_scales[3 * n + j] = dM[0][j] * P.R[0][j] + dM[1][j] * P.R[1][j] + dM[2][j] * P.R[2][j];
      for (int i = 0; i < 3; ++i) G[i][j] = dM[i][j] * s[j];
    }
    const T w = P.q[0], x = P.q[1], y = P.q[2], zq = P.q[3];
    T dq[4];
    dq[0] = 2 * (-zq * G[0][1] + y * G[0][2] + zq * G[1][0] - x * G[1][2] - y * G[2][0] + x * G[2][1]);
    dq[1] = 2 * (y * G[0][1] + zq * G[0][2] + y * G[1][0] - 2 * x * G[1][1] - w * G[1][2] + zq * G[2][0] + w * G[2][1] - 2 * x * G[2][2]);
    dq[2] = 2 * (-2 * y * G[0][0] + x * G[0][1] + w * G[0][2] + x * G[1][0] + zq * G[1][2] - w * G[2][0] + zq * G[2][1] - 2 * y * G[2][2]);
    dq[3] = 2 * (-2 * zq * G[0][0] - w * G[0][1] + x * G[0][2] + w * G[1][0] - 2 * zq * G[1][1] + y * G[1][2] + x * G[2][0] + y * G[2][1]);
    const T qdot = P.q[0] * dq[0] + P.q[1] * dq[1] + P.q[2] * dq[2] + P.q[3] * dq[3];
    for (int i = 0; i < 4; ++i) d_quats[4 * n + i] = (dq[i] - P.q[i] * qdot) / P.qn;
    if (sh) {
      T d[3] = {m[0] - campos[0], m[1] - campos[1], m[2] - campos[2]};
      const T dn = std::max(T(1e-12), std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]));
      const T u3[3] = {d[0] / dn, d[1] / dn, d[2] / dn};
      T bval[16], db[16][3];
      sh_basis<T>(degree, u3[0], u3[1], u3[2], bval, db);
      const int nb = (degree + 1) * (degree + 1);
      T gdir[3] = {0, 0, 0};
      for (int ch = 0; ch < 3; ++ch) {
        T acc = 0;
        for (int k = 0; k < nb; ++k) acc += bval[k] * sh[((size_t)n * K + k) * 3 + ch];
        if (acc + T(0.5) < T(0)) continue;  // clamped at 0
        const T g = g_col[3 * n + ch];
        for (int k = 0; k < nb; ++k) {
          d_sh[((size_t)n * K + k) * 3 + ch] = bval[k] * g;
          const T sg = sh[((size_t)n * K + k) * 3 + ch] * g;
          gdir[0] += db[k][0] * sg;
          gdir[1] += db[k][1] * sg;
          gdir[2] += db[k][2] * sg;
        }
      }
      const T ud = u3[0] * gdir[0] + u3[1] * gdir[1] + u3[2] * gdir[2];
      for (int k = 0; k < 3; ++k) dm[k] += (gdir[k] - u3[k] * ud) / dn;
    }
    for (int k = 0; k < 3; ++k) d_means[3 * n + k] = dm[k];
  }
}

Cam make_cam(const at::Tensor& viewmat, const at::Tensor& K, int64_t W, int64_t H, double near, double far) {
  auto V = viewmat.to(at::kDouble).contiguous();
  auto Kd = K.to(at::kDouble).contiguous();
  const double* v = V.data_ptr<double>();
  const double* k = Kd.data_ptr<double>();
  Cam c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.V[i][j] = v[4 * i + j];
    c.t[i] = v[4 * i + 3];
  }
  c.fx = k[0]; c.fy = k[4]; c.cx = k[2]; c.cy = k[5];
  const double tfx = 0.5 * W / c.fx, tfy = 0.5 * H / c.fy;
  c.lxp = (W - c.cx) / c.fx + 0.3 * tfx; c.lxn = c.cx / c.fx + 0.3 * tfx;
  c.lyp = (H - c.cy) / c.fy + 0.3 * tfy; c.lyn = c.cy / c.fy + 0.3 * tfy;
  c.near = near; c.far = far; c.W = (int)W; c.H = (int)H;
  return c;
}

}  // namespace preprocess

// Returns [means2d [N,2], conics [N,3], depths [N], radii [N] int32, rects [N,4] int32, colors [N,3] (empty without sh)]
std::vector<at::Tensor> preprocess_forward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                              at::Tensor sh, int64_t degree, at::Tensor campos,
                                              at::Tensor viewmat, at::Tensor K, int64_t W, int64_t H,
                                              double near, double far) {
  TORCH_CHECK(means.device().is_cpu() && means.is_contiguous() && quats.is_contiguous() && scales.is_contiguous(),
              "preprocess: contiguous CPU tensors expected");
  const int64_t N = means.size(0);
  const bool has_sh = sh.numel() > 0;
  TORCH_CHECK(!has_sh || (sh.is_contiguous() && sh.size(0) == N && sh.size(2) == 3 && degree >= 0 && degree <= 3 &&
                          sh.size(1) >= (degree + 1) * (degree + 1)),
              "preprocess: bad sh / degree");
  auto c = preprocess::make_cam(viewmat, K, W, H, near, far);
  auto opt = means.options();
  auto means2d = at::empty({N, 2}, opt), conics = at::empty({N, 3}, opt), depths = at::empty({N}, opt);
  auto radii = at::empty({N}, opt.dtype(at::kInt)), rects = at::empty({N, 4}, opt.dtype(at::kInt));
  auto colors = has_sh ? at::empty({N, 3}, opt) : at::empty({0}, opt);
  auto cp = campos.to(means.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "preprocess_forward", [&] {
    preprocess::forward_impl<scalar_t>(c, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(),
                                       scales.data_ptr<scalar_t>(), has_sh ? sh.data_ptr<scalar_t>() : nullptr,
                                       has_sh ? (int)sh.size(1) : 0, (int)degree, cp.data_ptr<scalar_t>(), N,
                                       means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                                       depths.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                       rects.data_ptr<int32_t>(), has_sh ? colors.data_ptr<scalar_t>() : nullptr);
  });
  return {means2d, conics, depths, radii, rects, colors};
}

// Returns [d_means [N,3], d_quats [N,4], d_scales [N,3], d_sh (like sh)]
std::vector<at::Tensor> preprocess_backward(at::Tensor means, at::Tensor quats, at::Tensor scales,
                                               at::Tensor sh, int64_t degree, at::Tensor campos,
                                               at::Tensor viewmat, at::Tensor K, int64_t W, int64_t H,
                                               double near, double far, at::Tensor radii, at::Tensor g_m2d,
                                               at::Tensor g_con, at::Tensor g_dep, at::Tensor g_col) {
  const int64_t N = means.size(0);
  const bool has_sh = sh.numel() > 0;
  auto c = preprocess::make_cam(viewmat, K, W, H, near, far);
  // every element is written by the kernel (zeros for culled Gaussians / unused SH rows)
  auto d_means = at::empty_like(means), d_quats = at::empty_like(quats), d_scales = at::empty_like(scales);
  auto d_sh = at::empty_like(sh);
  auto cp = campos.to(means.scalar_type()).contiguous();
  g_m2d = g_m2d.contiguous(); g_con = g_con.contiguous(); g_dep = g_dep.contiguous();
  if (has_sh) g_col = g_col.contiguous();
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "preprocess_backward", [&] {
    preprocess::backward_impl<scalar_t>(
        c, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
        has_sh ? sh.data_ptr<scalar_t>() : nullptr, has_sh ? (int)sh.size(1) : 0, (int)degree,
        cp.data_ptr<scalar_t>(), N, radii.data_ptr<int32_t>(), g_m2d.data_ptr<scalar_t>(), g_con.data_ptr<scalar_t>(),
        g_dep.data_ptr<scalar_t>(), has_sh ? g_col.data_ptr<scalar_t>() : nullptr, d_means.data_ptr<scalar_t>(),
        d_quats.data_ptr<scalar_t>(), d_scales.data_ptr<scalar_t>(), has_sh ? d_sh.data_ptr<scalar_t>() : nullptr);
  });
  return {d_means, d_quats, d_scales, d_sh};
}
