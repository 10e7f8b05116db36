// Neighborhood attention on CPU: forward and backward (q, k, v, RPB), 1-D / 2-D / 3-D, dilation, stride (GNA),
// causal, GQA (kv heads dividing heads), any head_dim (value's may differ), arbitrary strides with a unit
// head_dim stride; float32 and float64.
//
// Semantics are those of visionattn.kernels.na (NATTEN's): per axis, dilation splits positions into groups,
// a query's window is k consecutive group coordinates, shifted inward at the borders; stride makes tiles of s
// queries share their leader's window; causal windows end at the query. The n-D window is the product of the
// per-axis windows. The RPB table is added unscaled at (key - query) / dilation + k - 1 per axis.
//
// Layout [B, *spatial, heads, head_dim]; 1-D and 2-D calls run as 3-D with leading size-1 axes (k = 1).
// Two paths (see their sections): the lane path (stride 1 along the last axis: every NAT / DiNAT layer) runs
// VL queries of a row at once, one per vector lane; the generic path (any geometry) one query at a time.
// Forward: logits of each query's window, softmax, weighted sum of values; the natural log-sum-exp is returned
// for the backward. Backward (from lse and delta = sum(dO * O) - dlse, so a softmax merged with extra keys
// backpropagates too): pass 1 per query recomputes the probabilities, gives dQ, dRPB (per-thread partial tables)
// and stores P and dS per window slot; pass 2 per key walks the queries whose window holds it (per-axis inverse
// tables), giving dK and dV without atomics. Every sum runs in a fixed order: results do not depend on the
// thread count, except dRPB's reduction over threads. Non-finite values reach exactly the queries (and, in the
// backward, the keys) whose windows hold them: nothing outside a window is ever multiplied.
//
// Registered as visionattn_cpu::na_forward / na_backward (TORCH_LIBRARY): torch.compile and torch.export see
// opaque ops; the Python side (visionattn.kernels._na_cpu) adds the fake implementations and autograd.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

namespace {

constexpr int kAxes = 3;

// One spatial axis: per query position y, its window (slot c's key at pos0[y] + c * d, slots [lo, hi) valid),
// the RPB index per slot, and the inverse (queries whose window holds key x) in CSR form.
struct Axis {
  int64_t L = 1, k = 1, d = 1, s = 1;
  bool causal = false;
  std::vector<int64_t> pos0;
  std::vector<int32_t> lo, hi;
  std::vector<int32_t> rel;  // [L * k]
  std::vector<int64_t> inv_off;  // [L + 1]
  std::vector<int32_t> inv_q, inv_c;
};

Axis make_axis(int64_t L, int64_t k, int64_t d, int64_t s, bool causal) {
  Axis a;
  a.L = L;
  a.k = k;
  a.d = d;
  a.s = s;
  a.causal = causal;
  a.pos0.resize(L);
  a.lo.resize(L);
  a.hi.resize(L);
  a.rel.resize(L * k);
  std::vector<int64_t> count(L + 1, 0);
  for (int64_t y = 0; y < L; ++y) {
    const int64_t m = y % d, ig = y / d, lg = (L - m + d - 1) / d;
    int64_t start, lo = 0, hi = k;
    if (causal) {
      const int64_t leader = std::min((ig / s) * s + s - 1, lg - 1);
      start = leader - k + 1;
      lo = std::max<int64_t>(0, -start);
      hi = std::min<int64_t>(k, ig - start + 1);
    } else {
      const int64_t leader = std::min((ig / s) * s + s / 2, lg - 1);
      start = std::min(std::max<int64_t>(leader - k / 2, 0), lg - k);
    }
    a.pos0[y] = start * d + m;
    a.lo[y] = static_cast<int32_t>(lo);
    a.hi[y] = static_cast<int32_t>(hi);
    for (int64_t c = 0; c < k; ++c) {
      a.rel[y * k + c] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(start + c - ig + k - 1, 0), 2 * k - 2));
    }
    for (int64_t c = lo; c < hi; ++c) count[a.pos0[y] + c * d + 1] += 1;
  }
  for (int64_t x = 0; x < L; ++x) count[x + 1] += count[x];
  a.inv_off = count;
  a.inv_q.resize(count[L]);
  a.inv_c.resize(count[L]);
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t y = 0; y < L; ++y) {
    for (int64_t c = a.lo[y]; c < a.hi[y]; ++c) {
      const int64_t x = a.pos0[y] + c * d, at = fill[x]++;
      a.inv_q[at] = static_cast<int32_t>(y);
      a.inv_c[at] = static_cast<int32_t>(c);
    }
  }
  return a;
}

// The call's geometry, every tensor viewed as [B, X0, X1, X2, heads, dim] (element strides).
struct View {
  int64_t b = 0, x[kAxes] = {0, 0, 0}, h = 0;
  int64_t at(int64_t bb, const int64_t* xx, int64_t hh) const {
    return bb * b + xx[0] * x[0] + xx[1] * x[1] + xx[2] * x[2] + hh * h;
  }
};

View view_of(const at::Tensor& t) {
  const int64_t n = t.dim() - 3;
  View v;
  v.b = t.stride(0);
  for (int64_t a = 0; a < kAxes; ++a) {
    const int64_t src = a - (kAxes - n);  // leading padded axes have size 1: their stride is never used
    v.x[a] = src >= 0 ? t.stride(1 + src) : 0;
  }
  v.h = t.stride(-2);
  return v;
}

struct Geometry {
  int64_t B = 0, heads = 0, kv_heads = 0, group = 1, D = 0, Dv = 0, K = 1, R = 1;
  int64_t S[kAxes] = {1, 1, 1};
  int64_t rpb_stride[kAxes] = {0, 0, 0};  // flat RPB-table strides of the padded [2k-1]^3 table
  Axis ax[kAxes];
  int64_t n_queries() const { return S[0] * S[1] * S[2]; }
  void unflat(int64_t p, int64_t* y) const {
    y[2] = p % S[2];
    p /= S[2];
    y[1] = p % S[1];
    y[0] = p / S[1];
  }
};

std::vector<int64_t> padded(c10::IntArrayRef v, int64_t n, int64_t fill) {
  std::vector<int64_t> out(kAxes, fill);
  for (int64_t a = 0; a < n; ++a) out[kAxes - n + a] = v[a];
  return out;
}

Geometry make_geometry(const at::Tensor& q, const at::Tensor& v, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                       c10::IntArrayRef dilation, const c10::List<bool>& is_causal) {
  const int64_t n = q.dim() - 3;
  TORCH_CHECK(n >= 1 && n <= kAxes, "na_cpu: query must be [B, *spatial(1-3), heads, head_dim], got ", q.sizes());
  TORCH_CHECK(static_cast<int64_t>(kernel_size.size()) == n && static_cast<int64_t>(stride.size()) == n &&
                  static_cast<int64_t>(dilation.size()) == n && static_cast<int64_t>(is_causal.size()) == n,
              "na_cpu: kernel_size, stride, dilation, is_causal need one entry per spatial axis");
  Geometry g;
  g.B = q.size(0);
  g.heads = q.size(-2);
  g.kv_heads = v.size(-2);
  g.group = g.heads / g.kv_heads;
  g.D = q.size(-1);
  g.Dv = v.size(-1);
  const auto ks = padded(kernel_size, n, 1), ss = padded(stride, n, 1), ds = padded(dilation, n, 1);
  std::vector<bool> cs(kAxes, false);
  for (int64_t a = 0; a < n; ++a) cs[kAxes - n + a] = is_causal.get(a);
  for (int64_t a = 0; a < kAxes; ++a) {
    const int64_t src = a - (kAxes - n);
    g.S[a] = src >= 0 ? q.size(1 + src) : 1;
    TORCH_CHECK(ks[a] >= 1 && ds[a] >= 1 && ss[a] >= 1 && ss[a] <= ks[a] && ks[a] * ds[a] <= g.S[a],
                "na_cpu: need 1 <= stride <= kernel_size and kernel_size * dilation <= size on every axis");
    g.ax[a] = make_axis(g.S[a], ks[a], ds[a], ss[a], cs[a]);
    g.K *= ks[a];
  }
  int64_t st = 1;
  for (int64_t a = kAxes - 1; a >= 0; --a) {
    g.rpb_stride[a] = st;
    st *= 2 * ks[a] - 1;
  }
  g.R = st;
  return g;
}

void check_tensors(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& rpb) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "na_cpu: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "na_cpu: query, key, value dtypes must match");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, "na_cpu: float32 or float64 only");
  TORCH_CHECK(k.dim() == q.dim() && v.dim() == q.dim() && k.sizes().slice(0, k.dim() - 2) == q.sizes().slice(0, q.dim() - 2) &&
                  k.size(-1) == q.size(-1) && v.sizes().slice(0, v.dim() - 1) == k.sizes().slice(0, k.dim() - 1) &&
                  k.size(-2) >= 1 && q.size(-2) % k.size(-2) == 0,
              "na_cpu: key must be shaped as query up to heads (kv_heads dividing heads), value as key up to head_dim");
  if (rpb.has_value()) {
    TORCH_CHECK(rpb->scalar_type() == q.scalar_type() && rpb->device().is_cpu(), "na_cpu: rpb dtype/device");
    TORCH_CHECK(rpb->dim() == q.dim() - 2 && rpb->size(0) == q.size(-2), "na_cpu: rpb must be [heads, 2k-1, ...]");
  }
}

at::Tensor unit_last(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// ------------------------------------------------------------------------------------------------ math

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// exp for float in a form the compiler vectorises (std::exp is a scalar libm call): 2^n * 2^f, degree-7
// Taylor polynomial of 2^f on |f| <= 1/2 (relative error < 1e-8); -inf -> 0, +inf -> inf, NaN -> NaN.
inline float exp_approx(float x) {
  float t = x * 1.4426950408889634f;
  const bool nan = t != t;
  t = t < -150.f ? -150.f : (t > 150.f ? 150.f : t);
  const float n = std::floor(t + 0.5f);
  const float f = t - n;
  float p = 1.5252734e-05f;
  p = p * f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  p = p * f + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t bits = (std::min(std::max(ni, -126), 127) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float r = p * scale;
  r = ni < -126 ? 0.f : r;
  r = ni > 127 ? std::numeric_limits<float>::infinity() : r;
  return nan ? x : r;
}

inline double exp_approx(double x) { return std::exp(x); }

// p[i] = exp(s[i] - shift); returns the sum
template <typename T>
inline T exp_shifted(const T* __restrict s, T shift, T* __restrict p, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T e = exp_approx(s[i] - shift);
    p[i] = e;
    sum += e;
  }
  return sum;
}

// ------------------------------------------------------------------------------------------------ windows

// Calls f(slot, key position) for the valid slots of query y's window, in slot order.
template <typename F>
inline void for_window(const Geometry& g, const int64_t* y, F&& f) {
  const Axis &a0 = g.ax[0], &a1 = g.ax[1], &a2 = g.ax[2];
  int64_t x[kAxes];
  for (int64_t c0 = a0.lo[y[0]]; c0 < a0.hi[y[0]]; ++c0) {
    x[0] = a0.pos0[y[0]] + c0 * a0.d;
    const int64_t r0 = a0.rel[y[0] * a0.k + c0] * g.rpb_stride[0];
    for (int64_t c1 = a1.lo[y[1]]; c1 < a1.hi[y[1]]; ++c1) {
      x[1] = a1.pos0[y[1]] + c1 * a1.d;
      const int64_t r1 = r0 + a1.rel[y[1] * a1.k + c1] * g.rpb_stride[1];
      const int64_t slot01 = (c0 * a1.k + c1) * a2.k;
      for (int64_t c2 = a2.lo[y[2]]; c2 < a2.hi[y[2]]; ++c2) {
        x[2] = a2.pos0[y[2]] + c2 * a2.d;
        f(slot01 + c2, x, r1 + a2.rel[y[2] * a2.k + c2]);
      }
    }
  }
}

int64_t grain(int64_t work_per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item)); }

// Work items in chunks handed out one at a time, f(begin, end) per chunk: on a shared (oversubscribed) CPU a
// descheduled thread does not hold the others up at the end, as with a static split.
template <typename F>
void parallel_rows(int64_t n, int64_t work_per_item, const F& f) {
  if (n <= 0) return;
  const int64_t threads = at::get_num_threads(), min_chunk = grain(work_per_item);
  if (threads == 1 || n <= min_chunk || at::in_parallel_region()) {
    f(int64_t(0), n);
    return;
  }
  const int64_t chunk = std::max(min_chunk, n / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(chunk); b < n; b = next.fetch_add(chunk)) f(b, std::min(n, b + chunk));
  });
}

// ------------------------------------------------------------------------------------------------ generic path
//
// One query at a time (head_dim vectorised): any geometry, used when the last axis has a stride > 1.


template <typename T>
void generic_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor* rpb, double scale_d, at::Tensor& out, at::Tensor& lse) {
  const View vq = view_of(q), vk = view_of(k), vv = view_of(v), vo = view_of(out);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* bp = rpb ? rpb->data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  const int64_t H = g.heads, D = g.D, Dv = g.Dv, N = g.n_queries(), K = g.K, R = g.R;
  const T scale = static_cast<T>(scale_d);
  parallel_rows(g.B * N * H, K * (D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> qs(D), acc(Dv), s(K), p(K);
    std::vector<int64_t> voff(K);
    int64_t y[kAxes];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hh = item % H, pos = (item / H) % N, b = item / (H * N);
      g.unflat(pos, y);
      const T* qrow = qp + vq.at(b, y, hh);
      for (int64_t i = 0; i < D; ++i) qs[i] = qrow[i] * scale;
      const T* bias = bp ? bp + hh * R : nullptr;
      const int64_t hk = hh / g.group;
      int64_t n = 0;
      T mx = -std::numeric_limits<T>::infinity();
      for_window(g, y, [&](int64_t, const int64_t* x, int64_t r) {
        T logit = dot(qs.data(), kp + vk.at(b, x, hk), D);
        if (bias) logit += bias[r];
        s[n] = logit;
        voff[n] = vv.at(b, x, hk);
        mx = std::max(mx, logit);
        ++n;
      });
      // an all -inf (or +inf) window gives NaN, as torch's softmax does
      const T sum = exp_shifted(s.data(), mx, p.data(), n);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t i = 0; i < n; ++i) axpy(p[i], vp + voff[i], acc.data(), Dv);
      T* orow = op + vo.at(b, y, hh);
      const T inv = T(1) / sum;
      for (int64_t i = 0; i < Dv; ++i) orow[i] = acc[i] * inv;
      lp[item] = mx + std::log(sum);
    }
  });
}

template <typename T>
void generic_backward(const Geometry& g, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                      const at::Tensor& v, const at::Tensor* rpb, const at::Tensor& lse, const at::Tensor& delta,
                      double scale_d, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor* drpb) {
  const View vdo = view_of(dout), vq = view_of(q), vk = view_of(k), vv = view_of(v);
  const View vdq = view_of(dq), vdk = view_of(dk), vdv = view_of(dv);
  const T* gp = dout.data_ptr<T>();
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* dlp = delta.data_ptr<T>();
  const T* lp = lse.data_ptr<T>();
  const T* bp = rpb ? rpb->data_ptr<T>() : nullptr;
  T* dqp = dq.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dv.data_ptr<T>();
  const int64_t H = g.heads, D = g.D, Dv = g.Dv, N = g.n_queries(), K = g.K, R = g.R;
  const int64_t items = g.B * N * H;
  const T scale = static_cast<T>(scale_d);
  // P and dS per (query, head, window slot); only valid slots are written and read
  std::unique_ptr<T[]> P(new T[items * K]), dS(new T[items * K]);
  const int64_t n_threads = at::get_num_threads();
  std::vector<T> drpb_part(drpb ? n_threads * H * R : 0, T(0));

  // pass 1, per query: P, dP = dO . v, dS = P (dP - delta), dQ = scale * sum dS k, dRPB partials
  parallel_rows(items, K * (2 * D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> qs(D), acc(D), s(K), p(K);
    std::vector<int64_t> koff(K), slot(K), ridx(K);
    T* dr = drpb ? drpb_part.data() + at::get_thread_num() * H * R : nullptr;
    int64_t y[kAxes];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hh = item % H, pos = (item / H) % N, b = item / (H * N);
      g.unflat(pos, y);
      const T* qrow = qp + vq.at(b, y, hh);
      for (int64_t i = 0; i < D; ++i) qs[i] = qrow[i] * scale;
      const T* grow = gp + vdo.at(b, y, hh);
      const T dl = dlp[item];
      const T* bias = bp ? bp + hh * R : nullptr;
      const int64_t hk = hh / g.group;
      const T m = lp[item];
      int64_t n = 0;
      for_window(g, y, [&](int64_t sl, const int64_t* x, int64_t r) {
        T logit = dot(qs.data(), kp + vk.at(b, x, hk), D);
        if (bias) logit += bias[r];
        s[n] = logit;
        koff[n] = vk.at(b, x, hk);
        // dP, kept in p[] until the probabilities are known
        p[n] = dot(grow, vp + vv.at(b, x, hk), Dv);
        slot[n] = sl;
        ridx[n] = r;
        ++n;
      });
      T* Prow = P.get() + item * K;
      T* dSrow = dS.get() + item * K;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t i = 0; i < n; ++i) {
        const T pr = exp_approx(s[i] - m);
        const T ds = pr * (p[i] - dl);
        Prow[slot[i]] = pr;
        dSrow[slot[i]] = ds;
        axpy(ds, kp + koff[i], acc.data(), D);
        if (dr) dr[hh * R + ridx[i]] += ds;
      }
      T* dqrow = dqp + vdq.at(b, y, hh);
      for (int64_t i = 0; i < D; ++i) dqrow[i] = acc[i] * scale;
    }
  });

  // pass 2, per key (and kv head): dK = scale * sum dS q, dV = sum P dO over the queries (of the query heads
  // sharing the kv head) whose window holds the key
  const Axis &a0 = g.ax[0], &a1 = g.ax[1], &a2 = g.ax[2];
  const int64_t Hk = g.kv_heads;
  parallel_rows(g.B * N * Hk, g.group * K * (D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> ak(D), av(Dv);
    int64_t x[kAxes], y[kAxes];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hk = item % Hk, pos = (item / Hk) % N, b = item / (Hk * N);
      g.unflat(pos, x);
      std::fill(ak.begin(), ak.end(), T(0));
      std::fill(av.begin(), av.end(), T(0));
      for (int64_t hh = hk * g.group; hh < (hk + 1) * g.group; ++hh)
      for (int64_t i0 = a0.inv_off[x[0]]; i0 < a0.inv_off[x[0] + 1]; ++i0) {
        y[0] = a0.inv_q[i0];
        for (int64_t i1 = a1.inv_off[x[1]]; i1 < a1.inv_off[x[1] + 1]; ++i1) {
          y[1] = a1.inv_q[i1];
          const int64_t slot01 = (a0.inv_c[i0] * a1.k + a1.inv_c[i1]) * a2.k;
          const int64_t qrow01 = (b * N + (y[0] * g.S[1] + y[1]) * g.S[2]) * H + hh;
          for (int64_t i2 = a2.inv_off[x[2]]; i2 < a2.inv_off[x[2] + 1]; ++i2) {
            y[2] = a2.inv_q[i2];
            const int64_t qitem = qrow01 + y[2] * H, sl = slot01 + a2.inv_c[i2];
            axpy(dS[qitem * K + sl], qp + vq.at(b, y, hh), ak.data(), D);
            axpy(P[qitem * K + sl], gp + vdo.at(b, y, hh), av.data(), Dv);
          }
        }
      }
      T* dkrow = dkp + vdk.at(b, x, hk);
      for (int64_t i = 0; i < D; ++i) dkrow[i] = ak[i] * scale;
      T* dvrow = dvp + vdv.at(b, x, hk);
      for (int64_t i = 0; i < Dv; ++i) dvrow[i] = av[i];
    }
  });

  if (drpb) {
    T* out_rpb = drpb->data_ptr<T>();
    for (int64_t i = 0; i < H * R; ++i) {
      T total = 0;
      for (int64_t t = 0; t < n_threads; ++t) total += drpb_part[t * H * R + i];
      out_rpb[i] = total;
    }
  }
}

// ------------------------------------------------------------------------------------------------ lane path
//
// When the last axis has stride 1, the queries of one row (every axis but the last fixed) run VL at a time, one
// query per vector lane, columns in their natural order. Keys and values are first transposed per row to
// [dim][column] with ghost columns on each side; lane t of a block starting at column j0 then finds its window
// slot u at column j0 + t + d * (u - off) (d: dilation of the last axis): one contiguous vector load per (slot,
// dim) serves all VL queries, and the head_dim loops become plain vector FMAs without horizontal sums. The
// ghost columns make this exact at the borders: a border query's window is shifted inward by as many group
// columns as its diagonal read runs past the border, so the column k * d to the right (left) of a left (right)
// ghost is exactly the key its window holds instead; causal windows read zeros there and mask them. The RPB (and the causal mask) per (row offset,
// slot, lane) comes from a table built per call. Scores, values and gradients use GCC/Clang vector types
// (64 bytes: one AVX-512 register, two AVX2 ones): no intrinsics, any x86-64 or ARM target.

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t lanes() {
  return 64 / sizeof(T);
}

template <typename T>
inline vec<T> load(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, const vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline vec<T> splat(T x) {
  return vec<T>{} + x;
}
template <typename T>
inline vec<T> vmax(const vec<T>& a, const vec<T>& b) {
  return a > b ? a : b;  // NaN in a lane: keeps b unless b is NaN; a NaN score still reaches the sum below
}

inline vec<float> vexp(vec<float> x) {
  typedef int32_t ivec __attribute__((vector_size(64)));
  const auto nan = x != x;
  vec<float> t = x * 1.4426950408889634f;
  t = t < -150.f ? splat(-150.f) : t;
  t = t > 150.f ? splat(150.f) : t;
  const vec<float> magic = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vec<float> n = (t + magic) - magic;
  const vec<float> f = t - n;
  vec<float> p = splat(1.5252734e-05f);
  p = p * f + 1.5403530e-04f;
  p = p * f + 1.3333558e-03f;
  p = p * f + 9.6181291e-03f;
  p = p * f + 5.5504109e-02f;
  p = p * f + 2.4022651e-01f;
  p = p * f + 6.9314718e-01f;
  p = p * f + 1.0f;
  const ivec ni = __builtin_convertvector(n, ivec);
  ivec e = ni < -126 ? ivec{} - 126 : ni;
  e = e > 127 ? ivec{} + 127 : e;
  vec<float> scale;
  const ivec bits = (e + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  vec<float> r = p * scale;
  r = ni < -126 ? vec<float>{} : r;
  r = ni > 127 ? splat(std::numeric_limits<float>::infinity()) : r;
  return nan ? x : r;
}

inline vec<double> vexp(vec<double> x) {
  for (int64_t i = 0; i < lanes<double>(); ++i) x[i] = std::exp(x[i]);
  return x;
}

// In-register transpose of a VL x VL tile: stage H swaps bit H of the row index with bit H of the column index
// (log2(VL) stages of VL two-source shuffles: one vpermt2ps each with AVX-512).
template <int H, int N, bool High>
constexpr int swap_index(int c) {
  return High ? ((c & H) ? N + c : (c ^ H)) : ((c & H) ? N + (c ^ H) : c);
}
template <int H, bool High, typename V, int... C>
inline V swap_shuffle(V a, V b, std::integer_sequence<int, C...>) {
  return __builtin_shufflevector(a, b, swap_index<H, sizeof...(C), High>(C)...);
}
template <typename T, int H>
inline void transpose_stage(vec<T>* r) {
  constexpr int N = lanes<T>();
  using seq = std::make_integer_sequence<int, N>;
  for (int i = 0; i < N; ++i) {
    if (i & H) continue;
    const vec<T> lo = swap_shuffle<H, false>(r[i], r[i ^ H], seq{});
    const vec<T> hi = swap_shuffle<H, true>(r[i], r[i ^ H], seq{});
    r[i] = lo;
    r[i ^ H] = hi;
  }
}
template <typename T>
inline void transpose_tile(vec<T>* r) {
  transpose_stage<T, 1>(r);
  transpose_stage<T, 2>(r);
  transpose_stage<T, 4>(r);
  if constexpr (lanes<T>() == 16) transpose_stage<T, 8>(r);
}

// dst[i * ds + t] = scale * src[t * ss + i] for i < D, t < VL; rows t >= nt read as zeros
template <typename T>
inline void to_lanes(const T* src, int64_t ss, int64_t nt, int64_t D, T scale, T* dst, int64_t ds) {
  constexpr int64_t VL = lanes<T>();
  int64_t i0 = 0;
  for (; i0 + VL <= D; i0 += VL) {
    vec<T> r[VL];
    for (int64_t t = 0; t < VL; ++t) r[t] = t < nt ? load(src + t * ss + i0) * scale : vec<T>{};
    transpose_tile<T>(r);
    for (int64_t i = 0; i < VL; ++i) store(dst + (i0 + i) * ds, r[i]);
  }
  for (; i0 < D; ++i0)
    for (int64_t t = 0; t < VL; ++t) dst[i0 * ds + t] = t < nt ? src[t * ss + i0] * scale : T(0);
}

// dst[t * ds + i] = scale * src[i * ss + t] for i < D, t < nt
template <typename T>
inline void from_lanes(const T* src, int64_t ss, int64_t nt, int64_t D, T scale, T* dst, int64_t ds) {
  constexpr int64_t VL = lanes<T>();
  int64_t i0 = 0;
  for (; i0 + VL <= D; i0 += VL) {
    vec<T> r[VL];
    for (int64_t i = 0; i < VL; ++i) r[i] = load(src + (i0 + i) * ss) * scale;
    transpose_tile<T>(r);
    for (int64_t t = 0; t < nt; ++t) store(dst + t * ds + i0, r[t]);
  }
  for (; i0 < D; ++i0)
    for (int64_t t = 0; t < nt; ++t) dst[t * ds + i0] = src[i0 * ss + t] * scale;
}

// Up to 8 independent accumulators per call: one chain per FMA latency would leave the FMA units idle.
constexpr int64_t kChunk = 8;

// out[c] = init[c * init_stride] + sum_i a[i * as] * b[i * bs + c * du] for c < C (vectors of VL lanes): the
// diagonal dot products of a block (scores q.k, or dO.v; slots du columns apart)
template <typename T, int C>
inline void diag_dots_n(const T* a, int64_t as, const T* b, int64_t bs, int64_t du, int64_t D, const T* init,
                        int64_t init_stride, vec<T>* out) {
  vec<T> acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = init ? load(init + c * init_stride) : vec<T>{};
  for (int64_t i = 0; i < D; ++i) {
    const vec<T> av = load(a + i * as);
    const T* bi = b + i * bs;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] += av * load(bi + c * du);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <typename T>
inline void diag_dots(const T* a, int64_t as, const T* b, int64_t bs, int64_t du, int64_t D, const T* init,
                      int64_t init_stride, int64_t n, vec<T>* out) {
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const T* in = init ? init + c0 * init_stride : nullptr;
    switch (std::min(kChunk, n - c0)) {
      case 8: diag_dots_n<T, 8>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 7: diag_dots_n<T, 7>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 6: diag_dots_n<T, 6>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 5: diag_dots_n<T, 5>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 4: diag_dots_n<T, 4>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 3: diag_dots_n<T, 3>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      case 2: diag_dots_n<T, 2>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
      default: diag_dots_n<T, 1>(a, as, b + c0 * du, bs, du, D, in, init_stride, out + c0); break;
    }
  }
}

// out[c] = sum_{n, u} w[n * kk + u] * rows[n][(i0 + c) * ld + u * du] for c < C: weights (P or dS) times the
// diagonals of value or key rows, for dims i0 .. i0 + C
template <typename T, int C>
inline void diag_mix_n(const vec<T>* w, const T* const* rows, int64_t n_rows, int64_t kk, int64_t ld, int64_t du,
                       int64_t i0, vec<T>* out) {
  vec<T> acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = vec<T>{};
  for (int64_t n = 0; n < n_rows; ++n) {
    const T* row = rows[n] + i0 * ld;
    for (int64_t u = 0; u < kk; ++u) {
      const vec<T> wv = w[n * kk + u];
      const T* ru = row + u * du;
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[c] += wv * load(ru + c * ld);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <typename T>
inline void diag_mix(const vec<T>* w, const T* const* rows, int64_t n_rows, int64_t kk, int64_t ld, int64_t du,
                     int64_t D, vec<T>* out) {
  for (int64_t i0 = 0; i0 < D; i0 += kChunk) {
    switch (std::min(kChunk, D - i0)) {
      case 8: diag_mix_n<T, 8>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 7: diag_mix_n<T, 7>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 6: diag_mix_n<T, 6>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 5: diag_mix_n<T, 5>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 4: diag_mix_n<T, 4>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 3: diag_mix_n<T, 3>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      case 2: diag_mix_n<T, 2>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
      default: diag_mix_n<T, 1>(w, rows, n_rows, kk, ld, du, i0, out + i0); break;
    }
  }
}

// out[c] = sum_y a[y][a_off] * b[y][b_off + c * b_stride] for c < n (vectors): one key row's gradient
// contributions summed over the query rows whose windows hold it
template <typename T, int C>
inline void row_sums_n(const T* const* a, const T* const* b, int64_t ny, int64_t a_off, int64_t b_stride,
                       int64_t b_off, vec<T>* out) {
  vec<T> acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = vec<T>{};
  for (int64_t y = 0; y < ny; ++y) {
    const vec<T> av = load(a[y] + a_off);
    const T* by = b[y] + b_off;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[c] += av * load(by + c * b_stride);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

template <typename T>
inline void row_sums(const T* const* a, const T* const* b, int64_t ny, int64_t a_off, int64_t b_stride, int64_t b_off,
                     int64_t n, vec<T>* out) {
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t off = b_off + c0 * b_stride;
    switch (std::min(kChunk, n - c0)) {
      case 8: row_sums_n<T, 8>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 7: row_sums_n<T, 7>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 6: row_sums_n<T, 6>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 5: row_sums_n<T, 5>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 4: row_sums_n<T, 4>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 3: row_sums_n<T, 3>(a, b, ny, a_off, b_stride, off, out + c0); break;
      case 2: row_sums_n<T, 2>(a, b, ny, a_off, b_stride, off, out + c0); break;
      default: row_sums_n<T, 1>(a, b, ny, a_off, b_stride, off, out + c0); break;
    }
  }
}

// Geometry of the lane axis (the last one) and of the rows. Lanes are consecutive columns of one row in their
// natural order, dilation groups interleaved: query column j reads slot u of its window at j + d * (u - off)
// (ghosts past the borders), so a block of VL queries reads slot u with one contiguous load at any dilation.
struct LaneGeom {
  int64_t L, k, d, off, PL, Lp, Lext, rows, kv_rows, K01, R01, R2, bias_rows;
  bool causal, has_rpb;
};

template <typename T>
LaneGeom lane_geom(const Geometry& g, bool has_rpb) {
  constexpr int64_t VL = lanes<T>();
  const Axis& a = g.ax[2];
  LaneGeom lg;
  lg.L = a.L;
  lg.k = a.k;
  lg.d = a.d;
  lg.causal = a.causal;
  lg.has_rpb = has_rpb;
  lg.off = a.causal ? a.k - 1 : a.k / 2;
  lg.PL = (lg.off * a.d + VL - 1) / VL * VL;  // slot 0 of the first block starts on a vector boundary
  lg.Lp = (a.L + VL - 1) / VL * VL;
  lg.Lext = (lg.PL + lg.Lp + (a.k - 1 - lg.off) * a.d + VL - 1) / VL * VL;
  lg.rows = g.B * g.heads * g.S[0] * g.S[1];
  lg.kv_rows = g.B * g.kv_heads * g.S[0] * g.S[1];
  lg.K01 = g.ax[0].k * g.ax[1].k;
  lg.R2 = 2 * a.k - 1;
  lg.R01 = g.R / lg.R2;
  lg.bias_rows = has_rpb ? lg.R01 : (a.causal ? 1 : 0);
  return lg;
}

// row item (b, h, y0, y1); h counts `heads` heads (query heads for query rows, kv heads for key / value rows)
struct RowItem {
  int64_t b, h, y[2];
};

inline RowItem row_item(const Geometry& g, int64_t item, int64_t heads) {
  RowItem r;
  r.y[1] = item % g.S[1];
  item /= g.S[1];
  r.y[0] = item % g.S[0];
  item /= g.S[0];
  r.h = item % heads;
  r.b = item / heads;
  return r;
}

inline int64_t row_index(const Geometry& g, int64_t heads, int64_t b, int64_t h, int64_t y0, int64_t y1) {
  return ((b * heads + h) * g.S[0] + y0) * g.S[1] + y1;
}

// key column of lane-axis slot u for the query at column j (wrapped into the window at the borders), -1 when
// causal-invalid; *rel gets its RPB index
inline int64_t lane_key(const LaneGeom& lg, int64_t j, int64_t u, int64_t* rel = nullptr) {
  const int64_t grp = j % lg.d, jg = j / lg.d, Lg = (lg.L - grp + lg.d - 1) / lg.d;
  int64_t key = jg - lg.off + u;
  if (lg.causal) {
    if (key < 0) return -1;
  } else if (key < 0) {
    key += lg.k;
  } else if (key >= Lg) {
    key -= lg.k;
  }
  if (rel) *rel = key - jg + lg.k - 1;
  return grp + key * lg.d;
}

// the column a ghost column c (outside [0, L)) stands for, -1 for none (causal ghosts are zeros)
inline int64_t ghost_source(const LaneGeom& lg, int64_t c) {
  if (lg.causal) return -1;
  const int64_t from = c < 0 ? c + lg.k * lg.d : c - lg.k * lg.d;
  return from >= 0 && from < lg.L ? from : -1;
}

// k and v [b, x0, x1, column, h, :] transposed into kt / vt [row][dim][PL + column] (+ ghosts) per key / value
// row, both in one parallel region
template <typename T>
void transpose_rows(const Geometry& g, const LaneGeom& lg, const at::Tensor& k, const at::Tensor& v, T* kt, T* vt) {
  constexpr int64_t VL = lanes<T>();
  const int64_t Lext = lg.Lext, PL = lg.PL, L = lg.L;
  // ghosts: only the columns real queries read need their keys, (index, source index or -1 for zero); the rest
  // (read by padding lanes only, whose results are dropped or masked) get zeros so no lane reads stale memory
  const int64_t lo = PL - lg.off * lg.d, hi = PL + L + (lg.k - 1 - lg.off) * lg.d;
  std::vector<std::pair<int64_t, int64_t>> ghosts;
  for (int64_t e = lo; e < hi; ++e) {
    if (e >= PL && e < PL + L) continue;
    const int64_t from = ghost_source(lg, e - PL);
    ghosts.emplace_back(e, from >= 0 ? PL + from : -1);
  }
  const View vk = view_of(k), vv = view_of(v);
  parallel_rows(2 * lg.kv_rows, k.size(-1) * Lext, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const bool is_v = it >= lg.kv_rows;
      const int64_t item = is_v ? it - lg.kv_rows : it;
      const at::Tensor& x = is_v ? v : k;
      const View& vx = is_v ? vv : vk;
      const int64_t D = x.size(-1);
      const RowItem r = row_item(g, item, g.kv_heads);
      const int64_t y[kAxes] = {r.y[0], r.y[1], 0};
      const T* src = x.data_ptr<T>() + vx.at(r.b, y, r.h);
      const int64_t cs = vx.x[2];
      T* out = (is_v ? vt : kt) + item * D * Lext;
      for (int64_t j0 = 0; j0 < L; j0 += VL) to_lanes(src + j0 * cs, cs, std::min(VL, L - j0), D, T(1), out + PL + j0, Lext);
      for (int64_t i = 0; i < D; ++i) {
        T* row = out + i * Lext;
        std::fill(row, row + lo, T(0));
        std::fill(row + hi, row + Lext, T(0));
        for (const auto& gs : ghosts) row[gs.first] = gs.second >= 0 ? row[gs.second] : T(0);
      }
    }
  });
}

// bias[(h * bias_rows + rel01) * k + u][j]: RPB of (row offset rel01, lane slot u, query column j), -inf where
// causal-invalid; valid[u][j]: 1 for a real slot of a real query (j < L), else 0
template <typename T>
void lane_tables(const Geometry& g, const LaneGeom& lg, const T* rpb, std::vector<T>& bias, std::vector<T>& valid) {
  const int64_t k = lg.k, Lp = lg.Lp;
  valid.assign(k * Lp, T(0));
  for (int64_t u = 0; u < k; ++u)
    for (int64_t j = 0; j < lg.L; ++j) valid[u * Lp + j] = lane_key(lg, j, u) >= 0;
  if (lg.bias_rows == 0) return;
  bias.assign(g.heads * lg.bias_rows * k * Lp, T(0));
  for (int64_t h = 0; h < g.heads; ++h)
    for (int64_t r = 0; r < lg.bias_rows; ++r)
      for (int64_t u = 0; u < k; ++u)
        for (int64_t j = 0; j < lg.L; ++j) {
          int64_t rel = 0;
          const bool ok = lane_key(lg, j, u, &rel) >= 0;
          T val = -std::numeric_limits<T>::infinity();
          if (ok) val = rpb ? rpb[h * g.R + r * lg.R2 + rel] : T(0);
          bias[((h * lg.bias_rows + r) * k + u) * Lp + j] = val;
        }
}

// the valid row offsets (all axes but the last) of a query row: key row, RPB row index, slot index
struct RowSlot {
  int64_t x0, x1, rel01, slot01;
};

inline int64_t row_slots(const Geometry& g, const int64_t* y, RowSlot* out) {
  const Axis &a0 = g.ax[0], &a1 = g.ax[1];
  int64_t n = 0;
  for (int64_t c0 = a0.lo[y[0]]; c0 < a0.hi[y[0]]; ++c0)
    for (int64_t c1 = a1.lo[y[1]]; c1 < a1.hi[y[1]]; ++c1) {
      const int64_t rel01 = a0.rel[y[0] * a0.k + c0] * (2 * a1.k - 1) + a1.rel[y[1] * a1.k + c1];
      out[n++] = {a0.pos0[y[0]] + c0 * a0.d, a1.pos0[y[1]] + c1 * a1.d, rel01, c0 * a1.k + c1};
    }
  return n;
}

// logits S[n][u] (VL lanes each) of a block's queries (qT: [dim][qs]) against the key rows `kt`
template <typename T>
inline void block_scores(const LaneGeom& lg, const T* qT, int64_t qs, const T* const* kt, const RowSlot* slots,
                         int64_t n_slots, const T* bias_h, int64_t j0, int64_t D, vec<T>* S) {
  const int64_t k = lg.k;
  for (int64_t n = 0; n < n_slots; ++n) {
    const T* bt = bias_h ? bias_h + (lg.has_rpb ? slots[n].rel01 : 0) * k * lg.Lp + j0 : nullptr;
    diag_dots(qT, qs, kt[n], lg.Lext, lg.d, D, bt, lg.Lp, k, S + n * k);
  }
}

template <typename T>
void lane_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const T* rpb,
                  double scale_d, at::Tensor& out, at::Tensor& lse) {
  constexpr int64_t VL = lanes<T>();
  const LaneGeom lg = lane_geom<T>(g, rpb != nullptr);
  const int64_t D = g.D, Dv = g.Dv, H = g.heads, N = g.n_queries(), Lext = lg.Lext, kk = lg.k, L = lg.L;
  at::Tensor KT = at::empty({lg.kv_rows * D * Lext}, q.options());
  at::Tensor VT = at::empty({lg.kv_rows * Dv * Lext}, q.options());
  transpose_rows<T>(g, lg, k, v, KT.data_ptr<T>(), VT.data_ptr<T>());
  std::vector<T> bias, valid;
  lane_tables<T>(g, lg, rpb, bias, valid);
  const View vq = view_of(q), vo = view_of(out);
  const T* qp = q.data_ptr<T>();
  const T* ktp = KT.data_ptr<T>();
  const T* vtp = VT.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  parallel_rows(lg.rows, lg.Lp * g.K * (D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<RowSlot> slots(lg.K01);
    std::vector<T> qT(D * VL);
    std::vector<vec<T>> S(g.K), acc(Dv);
    std::vector<const T*> kt(lg.K01), vt(lg.K01);
    for (int64_t item = begin; item < end; ++item) {
      const RowItem r = row_item(g, item, H);
      const int64_t n_slots = row_slots(g, r.y, slots.data());
      const int64_t y[kAxes] = {r.y[0], r.y[1], 0};
      const T* qsrc = qp + vq.at(r.b, y, r.h);
      T* odst = op + vo.at(r.b, y, r.h);
      const int64_t qcs = vq.x[2], ocs = vo.x[2];
      const T* bias_h = lg.bias_rows ? bias.data() + r.h * lg.bias_rows * kk * lg.Lp : nullptr;
      const int64_t nS = n_slots * kk;
      for (int64_t j0 = 0; j0 < L; j0 += VL) {
        const int64_t nl = std::min(VL, L - j0);
        to_lanes(qsrc + j0 * qcs, qcs, nl, D, scale, qT.data(), VL);
        const int64_t base = lg.PL + j0 - lg.off * lg.d;
        for (int64_t n = 0; n < n_slots; ++n) {
          const int64_t kr = row_index(g, g.kv_heads, r.b, r.h / g.group, slots[n].x0, slots[n].x1);
          kt[n] = ktp + kr * D * Lext + base;
          vt[n] = vtp + kr * Dv * Lext + base;
        }
        block_scores(lg, qT.data(), VL, kt.data(), slots.data(), n_slots, bias_h, j0, D, S.data());
        vec<T> mx = splat(-std::numeric_limits<T>::infinity());
        for (int64_t n = 0; n < nS; ++n) mx = vmax<T>(S[n], mx);
        vec<T> sum{};
        for (int64_t n = 0; n < nS; ++n) {
          S[n] = vexp(S[n] - mx);
          sum += S[n];
        }
        const vec<T> inv = T(1) / sum;
        diag_mix(S.data(), vt.data(), n_slots, kk, Lext, lg.d, Dv, acc.data());
        for (int64_t i = 0; i < Dv; ++i) acc[i] *= inv;
        from_lanes(reinterpret_cast<const T*>(acc.data()), VL, nl, Dv, T(1), odst + j0 * ocs, ocs);
        T* lrow = lp + (r.b * N + (r.y[0] * g.S[1] + r.y[1]) * g.S[2] + j0) * H + r.h;
        for (int64_t t = 0; t < nl; ++t) lrow[t * H] = mx[t] + std::log(sum[t]);
      }
    }
  });
}

template <typename T>
void lane_backward(const Geometry& g, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const T* rpb, const at::Tensor& lse, const at::Tensor& delta, double scale_d,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, T* drpb) {
  constexpr int64_t VL = lanes<T>();
  const LaneGeom lg = lane_geom<T>(g, rpb != nullptr);
  const int64_t D = g.D, Dv = g.Dv, H = g.heads, N = g.n_queries(), Lext = lg.Lext, Lp = lg.Lp, kk = lg.k;
  const int64_t L = lg.L, rows = lg.rows, K01 = lg.K01, du = lg.d;
  at::Tensor KT = at::empty({lg.kv_rows * D * Lext}, q.options());
  at::Tensor VT = at::empty({lg.kv_rows * Dv * Lext}, q.options());
  transpose_rows<T>(g, lg, k, v, KT.data_ptr<T>(), VT.data_ptr<T>());
  // per query row: P and dS per (row slot, lane slot, lane), scaled q and dO transposed, for pass 2
  at::Tensor Pb = at::empty({rows * K01 * kk * Lp}, q.options());
  at::Tensor dSb = at::empty({rows * K01 * kk * Lp}, q.options());
  at::Tensor QTb = at::empty({rows * D * Lp}, q.options());
  at::Tensor GTb = at::empty({rows * Dv * Lp}, q.options());
  std::vector<T> bias, valid;
  lane_tables<T>(g, lg, rpb, bias, valid);
  const int64_t n_threads = at::get_num_threads();
  const int64_t bias_size = H * lg.R01 * kk * Lp;
  std::vector<T> dbias(drpb ? n_threads * bias_size : 0, T(0));
  const View vq = view_of(q), vg = view_of(dout), vdq = view_of(dq), vdk = view_of(dk), vdv = view_of(dv);
  const T *qp = q.data_ptr<T>(), *gp = dout.data_ptr<T>(), *lp = lse.data_ptr<T>(), *dlp = delta.data_ptr<T>();
  const T *ktp = KT.data_ptr<T>(), *vtp = VT.data_ptr<T>();
  T *Pp = Pb.data_ptr<T>(), *dSp = dSb.data_ptr<T>(), *QTp = QTb.data_ptr<T>(), *GTp = GTb.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);

  // pass 1, per query row: P, dP = dO . v, dS = P (dP - delta), dQ = scale * sum dS k, dRPB partials
  parallel_rows(rows, Lp * g.K * (2 * D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<RowSlot> slots(K01);
    std::vector<vec<T>> S(g.K), dP(g.K), acc(D);
    std::vector<const T*> kt(K01), vt(K01);
    T* dbias_t = drpb ? dbias.data() + at::get_thread_num() * bias_size : nullptr;
    for (int64_t item = begin; item < end; ++item) {
      const RowItem r = row_item(g, item, H);
      const int64_t n_slots = row_slots(g, r.y, slots.data());
      const int64_t y[kAxes] = {r.y[0], r.y[1], 0};
      const int64_t qcs = vq.x[2], gcs = vg.x[2], dqcs = vdq.x[2];
      const T* bias_h = lg.bias_rows ? bias.data() + r.h * lg.bias_rows * kk * Lp : nullptr;
      T* QT = QTp + item * D * Lp;
      T* GT = GTp + item * Dv * Lp;
      for (int64_t j0 = 0; j0 < L; j0 += VL) {
        const int64_t nl = std::min(VL, L - j0);
        // transposed blocks of scaled q and dO go straight into the pass-2 buffers ([dim][Lp] per row)
        T* qblk = QT + j0;
        to_lanes(qp + vq.at(r.b, y, r.h) + j0 * qcs, qcs, nl, D, scale, qblk, Lp);
        T* gblk = GT + j0;
        to_lanes(gp + vg.at(r.b, y, r.h) + j0 * gcs, gcs, nl, Dv, T(1), gblk, Lp);
        vec<T> m = splat(std::numeric_limits<T>::infinity()), dl{};
        const int64_t at0 = (r.b * N + (r.y[0] * g.S[1] + r.y[1]) * g.S[2] + j0) * H + r.h;
        for (int64_t t = 0; t < nl; ++t) {
          m[t] = lp[at0 + t * H];
          dl[t] = dlp[at0 + t * H];
        }
        const int64_t base = lg.PL + j0 - lg.off * lg.d;
        for (int64_t n = 0; n < n_slots; ++n) {
          const int64_t kr = row_index(g, g.kv_heads, r.b, r.h / g.group, slots[n].x0, slots[n].x1);
          kt[n] = ktp + kr * D * Lext + base;
          vt[n] = vtp + kr * Dv * Lext + base;
        }
        block_scores(lg, qblk, Lp, kt.data(), slots.data(), n_slots, bias_h, j0, D, S.data());
        for (int64_t n = 0; n < n_slots; ++n) diag_dots<T>(gblk, Lp, vt[n], Lext, du, Dv, nullptr, 0, kk, dP.data() + n * kk);
        for (int64_t n = 0; n < n_slots; ++n) {
          T* Pd = Pp + ((item * K01 + slots[n].slot01) * kk) * Lp + j0;
          T* dSd = dSp + ((item * K01 + slots[n].slot01) * kk) * Lp + j0;
          T* db = dbias_t ? dbias_t + ((r.h * lg.R01 + slots[n].rel01) * kk) * Lp + j0 : nullptr;
          for (int64_t u = 0; u < kk; ++u) {
            const vec<T> ok = load(valid.data() + u * Lp + j0);
            const vec<T> p = ok != T(0) ? vexp(S[n * kk + u] - m) : vec<T>{};
            const vec<T> ds = ok != T(0) ? p * (dP[n * kk + u] - dl) : vec<T>{};
            store(Pd + u * Lp, p);
            store(dSd + u * Lp, ds);
            S[n * kk + u] = ds;
            if (db) store(db + u * Lp, load(db + u * Lp) + ds);
          }
        }
        diag_mix(S.data(), kt.data(), n_slots, kk, Lext, du, D, acc.data());
        from_lanes(reinterpret_cast<const T*>(acc.data()), VL, nl, D, scale,
                   dq.data_ptr<T>() + vdq.at(r.b, y, r.h) + j0 * dqcs, dqcs);
      }
    }
  });

  // pass 2, per key row (and kv head): dK = sum dS (scale q), dV = sum P dO over the query rows (of the query
  // heads sharing the kv head) whose windows hold it, accumulated along the diagonals into [dim][column] with
  // ghosts, then the ghosts folded onto the keys they stand for
  const Axis &a0 = g.ax[0], &a1 = g.ax[1];
  parallel_rows(lg.kv_rows, g.group * Lp * g.K * (D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> dKT(D * Lext), dVT(Dv * Lext);
    std::vector<vec<T>> part(std::max(D, Dv) * kk);
    std::vector<const T*> qt, gt, dsr, pr;  // per query row holding this key row
    for (int64_t item = begin; item < end; ++item) {
      const RowItem r = row_item(g, item, g.kv_heads);  // r.y is the key row, r.h the kv head
      qt.clear();
      gt.clear();
      dsr.clear();
      pr.clear();
      for (int64_t h = r.h * g.group; h < (r.h + 1) * g.group; ++h)
        for (int64_t i0 = a0.inv_off[r.y[0]]; i0 < a0.inv_off[r.y[0] + 1]; ++i0)
          for (int64_t i1 = a1.inv_off[r.y[1]]; i1 < a1.inv_off[r.y[1] + 1]; ++i1) {
            const int64_t qitem = row_index(g, H, r.b, h, a0.inv_q[i0], a1.inv_q[i1]);
            const int64_t slot01 = a0.inv_c[i0] * a1.k + a1.inv_c[i1];
            pr.push_back(Pp + (qitem * K01 + slot01) * kk * Lp);
            dsr.push_back(dSp + (qitem * K01 + slot01) * kk * Lp);
            qt.push_back(QTp + qitem * D * Lp);
            gt.push_back(GTp + qitem * Dv * Lp);
          }
      const int64_t nq = static_cast<int64_t>(qt.size());
      std::fill(dKT.begin(), dKT.end(), T(0));
      std::fill(dVT.begin(), dVT.end(), T(0));
      for (int64_t j0 = 0; j0 < L; j0 += VL) {
        const int64_t base = lg.PL + j0 - lg.off * lg.d;
        // sums over the query rows stay in registers; the overlapping diagonal updates of the [dim][column]
        // buffers then go dim-major, so no store is read back by the next update
        for (int64_t i = 0; i < D; ++i) row_sums(qt.data(), dsr.data(), nq, i * Lp + j0, Lp, j0, kk, part.data() + i * kk);
        for (int64_t u = 0; u < kk; ++u)
          for (int64_t i = 0; i < D; ++i) {
            T* dst = dKT.data() + i * Lext + base + u * du;
            store(dst, load(dst) + part[i * kk + u]);
          }
        for (int64_t i = 0; i < Dv; ++i) row_sums(gt.data(), pr.data(), nq, i * Lp + j0, Lp, j0, kk, part.data() + i * kk);
        for (int64_t u = 0; u < kk; ++u)
          for (int64_t i = 0; i < Dv; ++i) {
            T* dst = dVT.data() + i * Lext + base + u * du;
            store(dst, load(dst) + part[i * kk + u]);
          }
      }
      for (int64_t e = 0; e < Lext; ++e) {  // ghosts back onto their keys (causal ghosts only ever got zeros)
        const int64_t c = e - lg.PL;
        if (c >= 0 && c < L) continue;
        const int64_t from = ghost_source(lg, c);
        if (from < 0) continue;
        for (int64_t i = 0; i < D; ++i) dKT[i * Lext + lg.PL + from] += dKT[i * Lext + e];
        for (int64_t i = 0; i < Dv; ++i) dVT[i * Lext + lg.PL + from] += dVT[i * Lext + e];
      }
      const int64_t x[kAxes] = {r.y[0], r.y[1], 0};
      T* dkdst = dk.data_ptr<T>() + vdk.at(r.b, x, r.h);
      T* dvdst = dv.data_ptr<T>() + vdv.at(r.b, x, r.h);
      const int64_t kcs = vdk.x[2], vcs = vdv.x[2];
      for (int64_t j0 = 0; j0 < L; j0 += VL) {
        const int64_t nl = std::min(VL, L - j0);
        from_lanes(dKT.data() + lg.PL + j0, Lext, nl, D, T(1), dkdst + j0 * kcs, kcs);
        from_lanes(dVT.data() + lg.PL + j0, Lext, nl, Dv, T(1), dvdst + j0 * vcs, vcs);
      }
    }
  });

  if (drpb) {  // fold the per-lane tables onto the RPB table
    std::fill(drpb, drpb + H * g.R, T(0));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r01 = 0; r01 < lg.R01; ++r01)
        for (int64_t u = 0; u < kk; ++u)
          for (int64_t j = 0; j < L; ++j) {
            int64_t rel = 0;
            if (lane_key(lg, j, u, &rel) < 0) continue;
            const int64_t at = ((h * lg.R01 + r01) * kk + u) * Lp + j;
            T total = 0;
            for (int64_t t = 0; t < n_threads; ++t) total += dbias[t * bias_size + at];
            drpb[h * g.R + r01 * lg.R2 + rel] += total;
          }
  }
}

// ------------------------------------------------------------------------------------------------ dispatch

bool lane_path(const Geometry& g) { return g.ax[2].s == 1; }

template <typename T>
void run_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor* rpb, double scale, at::Tensor& out, at::Tensor& lse) {
  if (lane_path(g))
    lane_forward<T>(g, q, k, v, rpb ? rpb->data_ptr<T>() : nullptr, scale, out, lse);
  else
    generic_forward<T>(g, q, k, v, rpb, scale, out, lse);
}

template <typename T>
void run_backward(const Geometry& g, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor* rpb, const at::Tensor& lse, const at::Tensor& delta,
                  double scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor* drpb) {
  if (lane_path(g))
    lane_backward<T>(g, dout, q, k, v, rpb ? rpb->data_ptr<T>() : nullptr, lse, delta, scale, dq, dk, dv,
                     drpb ? drpb->data_ptr<T>() : nullptr);
  else
    generic_backward<T>(g, dout, q, k, v, rpb, lse, delta, scale, dq, dk, dv, drpb);
}

// ------------------------------------------------------------------------------------------------ ops

std::tuple<at::Tensor, at::Tensor> na_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                              const c10::optional<at::Tensor>& rpb, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef dilation,
                                              const c10::List<bool>& is_causal, double scale) {
  check_tensors(query, key, value, rpb);
  const at::Tensor q = unit_last(query), k = unit_last(key), v = unit_last(value);
  const Geometry g = make_geometry(q, v, kernel_size, stride, dilation, is_causal);
  std::vector<int64_t> oshape(q.sizes().begin(), q.sizes().end());
  oshape.back() = g.Dv;
  at::Tensor out = at::empty(oshape, q.options());
  at::Tensor lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options());
  at::Tensor table = rpb.has_value() ? rpb->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na_cpu_forward", [&] {
    run_forward<scalar_t>(g, q, k, v, rpb.has_value() ? &table : nullptr, scale, out, lse);
  });
  return {out, lse};
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>> na_backward(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const c10::optional<at::Tensor>& rpb, const at::Tensor& lse, const at::Tensor& delta, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef dilation, const c10::List<bool>& is_causal, double scale) {
  check_tensors(query, key, value, rpb);
  const at::Tensor q = unit_last(query), k = unit_last(key), v = unit_last(value);
  const at::Tensor go = unit_last(grad_out.to(q.scalar_type()));
  const at::Tensor l = lse.to(q.scalar_type()).contiguous(), dl = delta.to(q.scalar_type()).contiguous();
  std::vector<int64_t> oshape(q.sizes().begin(), q.sizes().end());
  oshape.back() = v.size(-1);
  TORCH_CHECK(go.sizes() == at::IntArrayRef(oshape), "na_cpu: grad_out must be [B, *spatial, heads, value head_dim]");
  TORCH_CHECK(l.sizes() == q.sizes().slice(0, q.dim() - 1) && dl.sizes() == l.sizes(),
              "na_cpu: lse and delta must be [B, *spatial, heads]");
  const Geometry g = make_geometry(q, v, kernel_size, stride, dilation, is_causal);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  c10::optional<at::Tensor> drpb;
  at::Tensor table;
  if (rpb.has_value()) {
    table = rpb->contiguous();
    drpb = at::empty(rpb->sizes(), rpb->options());
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na_cpu_backward", [&] {
    run_backward<scalar_t>(g, go, q, k, v, rpb.has_value() ? &table : nullptr, l, dl, scale, dq, dk, dv,
                           drpb.has_value() ? &*drpb : nullptr);
  });
  return {dq, dk, dv, drpb};
}

}  // namespace

TORCH_LIBRARY(visionattn_cpu, m) {
  m.def(
      "na_forward(Tensor query, Tensor key, Tensor value, Tensor? rpb, int[] kernel_size, int[] stride, "
      "int[] dilation, bool[] is_causal, float scale) -> (Tensor, Tensor)");
  m.def(
      "na_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor? rpb, Tensor lse, Tensor delta, "
      "int[] kernel_size, int[] stride, int[] dilation, bool[] is_causal, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor?)");
}

TORCH_LIBRARY_IMPL(visionattn_cpu, CPU, m) {
  m.impl("na_forward", &na_forward);
  m.impl("na_backward", &na_backward);
}
