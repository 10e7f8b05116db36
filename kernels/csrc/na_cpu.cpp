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
// for the backward. Backward (from lse and delta = sum(dO * O) - dlse, given, so that a softmax merged with extra
// keys backpropagates too, or computed from O as the rows are reached): pass 1 per query recomputes the
// probabilities, gives dQ and stores P and dS per window slot; dRPB sums the stored dS per head; pass 2 per key
// walks the queries whose window holds it (per-axis inverse tables), giving dK and dV without atomics. Every sum runs in a fixed order, whichever thread runs it: results
// are the same, bit for bit, at any thread count and from run to run. Non-finite values reach exactly the queries
// (and, in the backward, the keys) whose windows hold them: nothing outside a window is ever multiplied.
//
// Registered as visionattn_cpu::na_forward / na_backward (TORCH_LIBRARY): torch.compile and torch.export see
// opaque ops; the Python side (visionattn.kernels._na_cpu) adds the fake implementations and autograd.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
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
  // positions in dilation-group order (0, d, 2d, .., 1, 1 + d, ..): the order rows are visited in, so that
  // consecutive rows share all but one row of their windows at any dilation
  std::vector<int32_t> order;
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
  for (int64_t m = 0; m < d; ++m)
    for (int64_t y = m; y < L; y += d) a.order.push_back(static_cast<int32_t>(y));
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

// exp in plain arithmetic, so that it vectorises (std::exp is a scalar libm call), for scalars (V = T) and
// vectors (V = vec<T>, below): x = n ln2 + r (Cody-Waite: ln2 split into a high part, exact when multiplied by
// n, and a low part), |r| <= ln2 / 2, exp(r) by its Taylor polynomial (fp32: degree 7, fp64: degree 13; the
// truncation error is far below an ulp), times 2^n built in the exponent field. The integer n is read from the
// rounding constant's mantissa (no float -> int64 conversion: AVX2 has none). Results below the smallest normal
// number flush to 0, x above 88 (fp32) / 709 (fp64) gives inf; -inf -> 0, +inf -> inf, NaN -> NaN.
template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693145751953125f,
                         ln2_lo = 1.42860682030941723e-6f;
  static constexpr float round = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer held in the mantissa
  static constexpr float lo = -87.f, hi = 88.f;
  static constexpr int degree = 7, mant = 23, bias = 127;
};
template <>
struct ExpConst<double> {
  static constexpr double log2e = 1.44269504088896341, ln2_hi = 6.93147180369123816490e-01,
                          ln2_lo = 1.90821492927058770002e-10;
  static constexpr double round = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr int degree = 13, mant = 52, bias = 1023;
};

template <typename T, int N>
struct Taylor {  // 1 / i! for i <= N
  T c[N + 1];
  constexpr Taylor() : c{} {
    c[0] = 1;
    for (int i = 1; i <= N; ++i) c[i] = c[i - 1] / T(i);
  }
};

// T: float / double; V: T or a vector of T; I: the integer type (vector) of V's shape
template <typename T, typename V, typename I>
inline V exp_poly(V x) {
  using C = ExpConst<T>;
  static constexpr Taylor<T, C::degree> taylor{};
  const V zero{};
  const auto nan = x != x;
  const auto under = x < C::lo;
  const auto over = x > C::hi;
  V t = under ? zero + C::lo : x;
  t = over ? zero + C::hi : t;
  const V shifted = t * C::log2e + C::round;
  const V n = shifted - C::round;
  const V r = (t - n * C::ln2_hi) - n * C::ln2_lo;
  V p = zero + taylor.c[C::degree];
#pragma GCC unroll 16
  for (int i = C::degree - 1; i >= 0; --i) p = p * r + taylor.c[i];
  I ni, round_bits;
  std::memcpy(&ni, &shifted, sizeof(ni));
  const V round = zero + C::round;
  std::memcpy(&round_bits, &round, sizeof(round_bits));
  const I e = (ni - round_bits + C::bias) << C::mant;
  V scale;
  std::memcpy(&scale, &e, sizeof(scale));
  V res = p * scale;
  res = under ? zero : res;
  res = over ? zero + std::numeric_limits<T>::infinity() : res;
  return nan ? x : res;
}

inline float exp_approx(float x) { return exp_poly<float, float, int32_t>(x); }
inline double exp_approx(double x) { return exp_poly<double, double, int64_t>(x); }

// Vector types one machine register wide, chosen by the target the file is compiled for: 64 bytes with AVX-512
// (16 fp32 lanes), 32 with AVX2 (8), 16 bytes otherwise (SSE2, ARM NEON, and SVE machines through NEON; other
// targets lower them to what they have). A wider type than the registers would be split by the compiler, and its
// accumulators would no longer fit the register file (the spills that made an AVX-512-sized kernel slow on AVX2).
// GCC / Clang vector extensions, no intrinsics: every target builds the same source.
#if defined(__AVX512F__)
#define NA_VEC_BYTES 64
#define NA_ISA "avx512"
#elif defined(__AVX2__)
#define NA_VEC_BYTES 32
#define NA_ISA "avx2"
#elif defined(__AVX__)
#define NA_VEC_BYTES 16
#define NA_ISA "avx"
#elif defined(__SSE2__)
#define NA_VEC_BYTES 16
#define NA_ISA "sse2"
#elif defined(__ARM_FEATURE_SVE)
#define NA_VEC_BYTES 16
#define NA_ISA "neon+sve"  // SVE machines run the NEON-width vectors
#elif defined(__ARM_NEON)
#define NA_VEC_BYTES 16
#define NA_ISA "neon"
#else
#define NA_VEC_BYTES 16
#define NA_ISA "generic"
#endif
constexpr int kVecBytes = NA_VEC_BYTES;

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t lanes() {
  return kVecBytes / sizeof(T);
}
// integer vectors of the same shape (exponent arithmetic of vexp)
template <typename T>
struct IntVecOf;
template <>
struct IntVecOf<float> {
  typedef int32_t type __attribute__((vector_size(kVecBytes)));
};
template <>
struct IntVecOf<double> {
  typedef int64_t type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using ivec = typename IntVecOf<T>::type;

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

inline vec<float> vexp(vec<float> x) { return exp_poly<float, vec<float>, ivec<float>>(x); }
inline vec<double> vexp(vec<double> x) { return exp_poly<double, vec<double>, ivec<double>>(x); }

// log for the softmax sums (x >= 1, or NaN / inf, which pass through): x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(z), z = (m - 1) / (m + 1), |z| < 0.172, by its odd series (fp32 to z^9, fp64 to z^21)
template <typename T>
inline vec<T> vlog_ge1(vec<T> x) {
  using C = ExpConst<T>;
  using I = ivec<T>;
  constexpr int terms = sizeof(T) == 4 ? 5 : 11;
  I bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const I one_exp = I{} + (I{} + C::bias) << C::mant;
  I e = (bits >> C::mant) - C::bias;  // x >= 1: the sign bit is clear
  I mbits = (bits & ((I{} + 1) << C::mant) - 1) | one_exp;
  vec<T> m;
  std::memcpy(&m, &mbits, sizeof(m));
  const auto big = m > T(1.4142135623730951);
  m = big ? m * T(0.5) : m;
  e = big ? e + 1 : e;
  const vec<T> z = (m - T(1)) / (m + T(1)), z2 = z * z;
  vec<T> p = splat<T>(T(1) / T(2 * terms - 1));
  for (int k = terms - 2; k >= 0; --k) p = p * z2 + T(1) / T(2 * k + 1);
  vec<T> ef;
  for (int64_t t = 0; t < lanes<T>(); ++t) ef[t] = static_cast<T>(e[t]);
  const vec<T> res = ef * C::ln2_hi + (T(2) * z * p + ef * C::ln2_lo);
  return x != x || x == std::numeric_limits<T>::infinity() ? x : res;
}

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

// Runs body() on `threads` OpenMP threads, one parallel region (inline when one thread, or when already inside a
// parallel region); bodies take their work from a shared queue. (Letting early finishers sleep on a futex instead of
// spinning in the region's closing barrier was tried: no gain measured on a shared 2-core Zen 3, forward slower.)
template <typename F>
void run_team(int64_t threads, const F& body) {
  if (threads <= 1 || at::in_parallel_region()) {
    body();
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body();
  });
}

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
  run_team(threads, [&] {
    for (int64_t b = next.fetch_add(chunk); b < n; b = next.fetch_add(chunk)) f(b, std::min(n, b + chunk));
  });
}

// The softmax backward's row term delta = sum(dO * O) - dlse per (query, head): the caller's, or computed here from
// O (and the logsumexp's gradient, where it has one) as pass 1 reaches each query, so that no separate pass over dO
// and O (torch ops, each a parallel region of its own) runs before the kernel.
template <typename T>
struct DeltaSource {
  const T* given = nullptr;  // [B, *S, heads], contiguous
  const T* out = nullptr;
  View vo;
  const T* dlse = nullptr;  // [B, *S, heads], contiguous, or none
  int64_t Dv = 0;
  // item: the flat (batch, position, head) index; grow: the query's dO row; its O row at (b, y, h), column col
  T operator()(int64_t item, const T* grow, int64_t b, const int64_t* y, int64_t h, int64_t col = 0) const {
    if (given) return given[item];
    const T s = dot(grow, out + vo.at(b, y, h) + col * vo.x[2], Dv);
    return dlse ? s - dlse[item] : s;
  }
};

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
                      const at::Tensor& v, const at::Tensor* rpb, const at::Tensor& lse, const DeltaSource<T>& delta,
                      double scale_d, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor* drpb) {
  const View vdo = view_of(dout), vq = view_of(q), vk = view_of(k), vv = view_of(v);
  const View vdq = view_of(dq), vdk = view_of(dk), vdv = view_of(dv);
  const T* gp = dout.data_ptr<T>();
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
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

  // pass 1, per query: P, dP = dO . v, dS = P (dP - delta), dQ = scale * sum dS k, dRPB partials
  parallel_rows(items, K * (2 * D + Dv), [&](int64_t begin, int64_t end) {
    std::vector<T> qs(D), acc(D), s(K), p(K);
    std::vector<int64_t> koff(K), slot(K);
    int64_t y[kAxes];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t hh = item % H, pos = (item / H) % N, b = item / (H * N);
      g.unflat(pos, y);
      const T* qrow = qp + vq.at(b, y, hh);
      for (int64_t i = 0; i < D; ++i) qs[i] = qrow[i] * scale;
      const T* grow = gp + vdo.at(b, y, hh);
      const T dl = delta(item, grow, b, y, hh);
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

  // dRPB from the stored dS, one head per task and its queries in order: the same sums at any thread count
  if (drpb) {
    T* out_rpb = drpb->data_ptr<T>();
    std::fill(out_rpb, out_rpb + H * R, T(0));
    at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
      int64_t y[kAxes];
      for (int64_t hh = h0; hh < h1; ++hh)
        for (int64_t b = 0; b < g.B; ++b)
          for (int64_t pos = 0; pos < N; ++pos) {
            g.unflat(pos, y);
            const T* dSrow = dS.get() + ((b * N + pos) * H + hh) * K;
            for_window(g, y, [&](int64_t sl, const int64_t*, int64_t r) { out_rpb[hh * R + r] += dSrow[sl]; });
          }
    });
  }
}

// ------------------------------------------------------------------------------------------------ lane path
//
// When the last axis has stride 1, the queries of one row (every axis but the last fixed) run VL at a time, one
// query per vector lane, columns in their natural order. Key and value rows are transposed to [dim][column] with
// ghost columns on each side (per thread, as the query rows reach them: RowCache); lane t of a block starting at
// column j0 then finds its window
// slot u at column j0 + t + d * (u - off) (d: dilation of the last axis): one contiguous vector load per (slot,
// dim) serves all VL queries, and the head_dim loops become plain vector FMAs without horizontal sums. The
// ghost columns make this exact at the borders: a border query's window is shifted inward by as many group
// columns as its diagonal read runs past the border, so the column k * d to the right (left) of a left (right)
// ghost is exactly the key its window holds instead; causal windows read zeros there and mask them. The RPB
// (and the causal mask) per (row offset, slot, lane) comes from a table built per call. Vector width and register
// blocking follow the target (kVecBytes, kVecRegs above), so each ISA runs its natural width: 16 fp32 lanes and
// 32 registers with AVX-512, 8 lanes and 16 registers with AVX2, 4 lanes with NEON (32 registers) or SSE.

// In-register transpose of a VL x VL tile: stage H swaps bit H of the row index with bit H of the column index
// (log2(VL) stages of VL two-source shuffles: one vpermt2ps each with AVX-512; with AVX2 the stages map to
// vperm2f128 / vunpck / vshufps+vblend, with NEON to zip / trn).
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
template <typename T, int H = 1>
inline void transpose_tile(vec<T>* r) {
  if constexpr (H < lanes<T>()) {
    transpose_stage<T, H>(r);
    transpose_tile<T, 2 * H>(r);
  }
}

// dst[i * ds + t] = scale * src[t * ss + i] for i < D, t < VL; rows t >= nt read as zeros
template <typename T>
inline void to_lanes(const T* src, int64_t ss, int64_t nt, int64_t D, T scale, T* dst, int64_t ds) {
  constexpr int64_t VL = lanes<T>();
  int64_t i0 = 0;
  for (; i0 + VL <= D; i0 += VL) {
    vec<T> r[VL];
    if (nt == VL) {  // a full block: no per-row test
      for (int64_t t = 0; t < VL; ++t) r[t] = load(src + t * ss + i0) * scale;
    } else {
      for (int64_t t = 0; t < VL; ++t) r[t] = t < nt ? load(src + t * ss + i0) * scale : vec<T>{};
    }
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

// Vector registers of the target: how many accumulators a register-blocked loop may hold.
#if defined(__AVX512F__) || defined(__aarch64__)
#define NA_VEC_REGS 32
#else
#define NA_VEC_REGS 16
#endif
constexpr int kVecRegs = NA_VEC_REGS;

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
#pragma GCC unroll 2
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

// out[c] = sum_{n, u} w[n * kk + u] * rows[n][off + (i0 + c) * ld + u * du] for c < C: weights (P or dS) times
// the diagonals of value or key rows, for dims i0 .. i0 + C
template <typename T, int C>
inline void diag_mix_n(const vec<T>* w, const T* const* rows, int64_t off, int64_t n_rows, int64_t kk, int64_t ld,
                       int64_t du, int64_t i0, vec<T>* out) {
  vec<T> acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = vec<T>{};
  for (int64_t n = 0; n < n_rows; ++n) {
    const T* row = rows[n] + off + i0 * ld;
#pragma GCC unroll 2
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

// diag_mix_n for dims i0 .. i0 + min(kChunk, D - i0)
template <typename T>
inline void diag_mix_chunk(const vec<T>* w, const T* const* rows, int64_t off, int64_t n_rows, int64_t kk,
                           int64_t ld, int64_t du, int64_t i0, int64_t D, vec<T>* out) {
  switch (std::min(kChunk, D - i0)) {
    case 8: diag_mix_n<T, 8>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 7: diag_mix_n<T, 7>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 6: diag_mix_n<T, 6>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 5: diag_mix_n<T, 5>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 4: diag_mix_n<T, 4>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 3: diag_mix_n<T, 3>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    case 2: diag_mix_n<T, 2>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
    default: diag_mix_n<T, 1>(w, rows, off, n_rows, kk, ld, du, i0, out + i0); break;
  }
}

// part[((i - i0) * kk + u) * pw + j0 ..] = sum_y w[y][u * ls + j0 ..] * a[y][i * ls + j0 ..] for u0 <= u < u0 + UB,
// i0 <= i < i0 + IB (VL lanes: one block of query columns): P or dS (w) times transposed dO or q (a), summed over
// the query rows that hold one key row; UB x IB accumulators stay in registers, UB + IB loads per y
template <typename T, int UB, int IB>
__attribute__((always_inline)) inline void lane_outer_n(const T* const* w, const T* const* a, int64_t ny, int64_t ls,
                                                        int64_t j0, int64_t u0, int64_t i0, int64_t kk, int64_t pw,
                                                        T* part) {
  vec<T> acc[UB][IB];
  for (int u = 0; u < UB; ++u)
    for (int i = 0; i < IB; ++i) acc[u][i] = vec<T>{};
  for (int64_t y = 0; y < ny; ++y) {
    vec<T> wv[UB];
    for (int u = 0; u < UB; ++u) wv[u] = load(w[y] + (u0 + u) * ls + j0);
    const T* ay = a[y] + i0 * ls + j0;
    for (int i = 0; i < IB; ++i) {  // one dim's vector at a time: UB x IB + UB + 1 registers
      const vec<T> av = load(ay + i * ls);
      for (int u = 0; u < UB; ++u) acc[u][i] += wv[u] * av;
    }
  }
  for (int u = 0; u < UB; ++u)
    for (int i = 0; i < IB; ++i) store(part + (i * kk + u0 + u) * pw + j0, acc[u][i]);
}

constexpr int64_t kOuterU = kVecRegs >= 32 ? 4 : 2, kOuterI = 6;

// lane_outer_n for slots u0 .. u0 + UB and the nd (<= kOuterI) dims from i0
template <typename T, int UB, int IB = kOuterI>
inline void lane_outer_slots(int64_t nd, const T* const* w, const T* const* a, int64_t ny, int64_t ls, int64_t j0,
                             int64_t u0, int64_t i0, int64_t kk, int64_t pw, T* part) {
  if constexpr (IB > 1) {
    if (nd < IB) return lane_outer_slots<T, UB, IB - 1>(nd, w, a, ny, ls, j0, u0, i0, kk, pw, part);
  }
  lane_outer_n<T, UB, IB>(w, a, ny, ls, j0, u0, i0, kk, pw, part);
}

// lane_outer_n over all u < kk and the nd (<= kOuterI) dims from i0, for the query block at column j0
template <typename T>
inline void lane_outer(const T* const* w, const T* const* a, int64_t ny, int64_t ls, int64_t j0, int64_t kk,
                       int64_t i0, int64_t nd, int64_t pw, T* part) {
  int64_t u0 = 0;
  for (; u0 + kOuterU <= kk; u0 += kOuterU) lane_outer_slots<T, kOuterU>(nd, w, a, ny, ls, j0, u0, i0, kk, pw, part);
  for (; u0 < kk; ++u0) lane_outer_slots<T, 1>(nd, w, a, ny, ls, j0, u0, i0, kk, pw, part);
}

// dst[i * ld + e ..] = sum_u part[(i * kk + u) * pw + e - base - d u ..] for i < D, e < Le (blocks of VL): each key
// column gathers its window slots' sums (lane_outer's output); two column blocks and two partial sums at a time, so
// that the additions do not wait on one another
template <typename T>
inline void fold_slots(const T* part, int64_t pw, int64_t kk, int64_t d, int64_t base, int64_t D, int64_t Le, T* dst,
                       int64_t ld) {
  constexpr int64_t VL = lanes<T>();
  const int64_t step = pw - d;
  for (int64_t i = 0; i < D; ++i) {
    const T* src = part + i * kk * pw - base;
    T* out = dst + i * ld;
    int64_t e = 0;
    for (; e + 2 * VL <= Le; e += 2 * VL) {
      vec<T> a0{}, a1{}, b0{}, b1{};
      int64_t u = 0;
      for (; u + 1 < kk; u += 2) {
        a0 += load(src + e + u * step);
        b0 += load(src + e + VL + u * step);
        a1 += load(src + e + (u + 1) * step);
        b1 += load(src + e + VL + (u + 1) * step);
      }
      if (u < kk) {
        a0 += load(src + e + u * step);
        b0 += load(src + e + VL + u * step);
      }
      store(out + e, a0 + a1);
      store(out + e + VL, b0 + b1);
    }
    for (; e < Le; e += VL) {
      vec<T> a0{}, a1{};
      int64_t u = 0;
      for (; u + 1 < kk; u += 2) {
        a0 += load(src + e + u * step);
        a1 += load(src + e + (u + 1) * step);
      }
      if (u < kk) a0 += load(src + e + u * step);
      store(out + e, a0 + a1);
    }
  }
}

// out[i] = sum_y sum_u w[y][u * ls + j - d u] * a[y][(i0 + i) * ls + j - d u] for i < IB (vectors of VL key
// columns; j: the block's first column minus base0): one block of one key row's gradient (dK from dS and the scaled
// q, dV from P and dO), gathered from every query row y and window slot u that reaches it. The weight load serves
// IB dims: 1 + IB loads per IB FMAs, accumulators in registers, no intermediate buffer.
template <typename T, int IB>
inline void key_lane_n(const T* const* w, const T* const* a, int64_t ny, int64_t kk, int64_t d, int64_t ls,
                       int64_t j, int64_t i0, vec<T>* out) {
  vec<T> acc[IB];
  for (int i = 0; i < IB; ++i) acc[i] = vec<T>{};
  for (int64_t y = 0; y < ny; ++y) {
    const T* wy = w[y] + j;
    const T* ay = a[y] + i0 * ls + j;
    for (int64_t u = 0; u < kk; ++u) {
      const vec<T> wv = load(wy + u * (ls - d));
      const T* au = ay - u * d;
#pragma GCC unroll 16
      for (int i = 0; i < IB; ++i) acc[i] += wv * load(au + i * ls);
    }
  }
  for (int i = 0; i < IB; ++i) out[i] = acc[i];
}

template <typename T, int IB>
inline void key_lane_tail(int64_t ib, const T* const* w, const T* const* a, int64_t ny, int64_t kk, int64_t d,
                          int64_t ls, int64_t j, int64_t i0, vec<T>* out) {
  if constexpr (IB > 1) {
    if (ib < IB) return key_lane_tail<T, IB - 1>(ib, w, a, ny, kk, d, ls, j, i0, out);
  }
  key_lane_n<T, IB>(w, a, ny, kk, d, ls, j, i0, out);
}

constexpr int64_t kKeyDims = kVecRegs >= 32 ? 16 : 8;

// key_lane_n over all dims i < D (out[i])
template <typename T>
inline void key_lane(const T* const* w, const T* const* a, int64_t ny, int64_t kk, int64_t d, int64_t ls, int64_t j,
                     int64_t D, vec<T>* out) {
  for (int64_t i0 = 0; i0 < D; i0 += kKeyDims)
    key_lane_tail<T, kKeyDims>(std::min(kKeyDims, D - i0), w, a, ny, kk, d, ls, j, i0, out + i0);
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
  r.y[1] = g.ax[1].order[item % g.S[1]];
  item /= g.S[1];
  r.y[0] = g.ax[0].order[item % g.S[0]];
  item /= g.S[0];
  r.h = item % heads;
  r.b = item / heads;
  return r;
}

inline int64_t row_index(const Geometry& g, int64_t heads, int64_t b, int64_t h, int64_t y0, int64_t y1) {
  return ((b * heads + h) * g.S[0] + y0) * g.S[1] + y1;
}

// Prefetch of the n columns (each D values from p + c * cs) of a row that the next row item will read: q, k, v, O
// and dO rows are strided through memory (heads and the other tensors of a packed qkv between columns), and the
// transposes into lanes otherwise stall on each column's first load. One row item computes for several
// microseconds, time enough for the lines to arrive.
template <typename T>
inline void prefetch_columns(const T* p, int64_t cs, int64_t n, int64_t D) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t c = 0; c < n; ++c) {
    const T* col = p + c * cs;
    for (int64_t i = 0; i < D; i += line) __builtin_prefetch(col + i, 0, 3);
    __builtin_prefetch(col + D - 1, 0, 3);
  }
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

// The ghost columns of a transposed row: only the columns real queries read, [lo, hi), need their keys; the rest
// (read by padding lanes only, whose results are dropped or masked) get zeros so that no lane reads stale memory.
// col[e]: the key column that extended column e holds (-1: zeros); runs: consecutive ghosts with consecutive
// sources (first ghost column, first source column or -1, length).
struct Ghosts {
  int64_t lo = 0, hi = 0;
  std::vector<int64_t> col;
  std::vector<std::array<int64_t, 3>> runs;
};

inline Ghosts make_ghosts(const LaneGeom& lg) {
  Ghosts gh;
  gh.lo = lg.PL - lg.off * lg.d;
  gh.hi = lg.PL + lg.L + (lg.k - 1 - lg.off) * lg.d;
  gh.col.assign(lg.Lext, -1);
  for (int64_t e = gh.lo; e < gh.hi; ++e) {
    if (e >= lg.PL && e < lg.PL + lg.L) {
      gh.col[e] = e - lg.PL;
      continue;
    }
    const int64_t from = ghost_source(lg, e - lg.PL), src = from >= 0 ? lg.PL + from : -1;
    gh.col[e] = from;
    auto* last = gh.runs.empty() ? nullptr : &gh.runs.back();
    if (last && (*last)[0] + (*last)[2] == e && ((*last)[1] < 0 ? src < 0 : src == (*last)[1] + (*last)[2]))
      ++(*last)[2];
    else
      gh.runs.push_back({e, src, 1});
  }
  return gh;
}

// dst[i * ds + t] = rows[t][i] for i < D, t < VL: VL columns (each D contiguous values) to lanes
template <typename T>
inline void rows_to_lanes(const T* const* rows, int64_t D, T* dst, int64_t ds) {
  constexpr int64_t VL = lanes<T>();
  int64_t i0 = 0;
  for (; i0 + VL <= D; i0 += VL) {
    vec<T> r[VL];
    for (int64_t t = 0; t < VL; ++t) r[t] = load(rows[t] + i0);
    transpose_tile<T>(r);
    for (int64_t i = 0; i < VL; ++i) store(dst + (i0 + i) * ds, r[i]);
  }
  for (; i0 < D; ++i0)
    for (int64_t t = 0; t < VL; ++t) dst[i0 * ds + t] = rows[t][i0];
}

// one key or value row, [column][dim] at src (column stride cs), transposed into out [dim][extended column]: real
// columns at PL + column, ghosts holding their keys, zeros elsewhere; every block of VL columns in one transpose
template <typename T>
void transpose_row(const LaneGeom& lg, const Ghosts& gh, const T* src, int64_t cs, int64_t D, const T* zeros,
                   T* out) {
  constexpr int64_t VL = lanes<T>();
  const T* rows[VL];
  for (int64_t e0 = 0; e0 < lg.Lext; e0 += VL) {
    for (int64_t t = 0; t < VL; ++t) {
      const int64_t c = gh.col[e0 + t];
      rows[t] = c >= 0 ? src + c * cs : zeros;
    }
    rows_to_lanes(rows, D, out + e0, lg.Lext);
  }
}

// the gradient a ghost column collected, added to the key it stands for ([dim][column] rows, ld apart)
template <typename T>
void fold_ghosts(const Ghosts& gh, int64_t D, T* rows, int64_t ld) {
  for (const auto& r : gh.runs) {
    if (r[1] < 0) continue;  // causal ghosts only ever got zeros
    for (int64_t i = 0; i < D; ++i) {
      T* __restrict dst = rows + i * ld + r[1];
      const T* __restrict src = rows + i * ld + r[0];
      for (int64_t t = 0; t < r[2]; ++t) dst[t] += src[t];
    }
  }
}

// Transposed key and value rows, made when a query row first needs them and kept (per thread) while the window
// moves on: consecutive query rows share all but one key row of their windows. Direct-mapped by row position
// modulo k * d per axis, so the rows of one window never evict each other; a few rows per thread, hot in cache,
// instead of a transposed copy of the whole key and value tensors.
template <typename T>
class RowCache {
 public:
  RowCache(const Geometry& g, const LaneGeom& lg, const Ghosts& gh, const at::Tensor& k, const at::Tensor& v)
      : g_(g), lg_(lg), gh_(gh), kp_(k.data_ptr<T>()), vp_(v.data_ptr<T>()), vk_(view_of(k)), vv_(view_of(v)),
        D_(k.size(-1)), Dv_(v.size(-1)) {
    m0_ = std::min(g.S[0], g.ax[0].k * g.ax[0].d);
    m1_ = std::min(g.S[1], g.ax[1].k * g.ax[1].d);
    tag_.assign(m0_ * m1_, -1);
    buf_.resize(m0_ * m1_ * (D_ + Dv_) * lg.Lext);
    zeros_.assign(std::max(D_, Dv_), T(0));
  }

  // the transposed key row and value row of (batch b, kv head hk, row x0, x1)
  std::pair<const T*, const T*> get(int64_t b, int64_t hk, int64_t x0, int64_t x1) {
    const int64_t slot = (x0 % m0_) * m1_ + x1 % m1_;
    T* kt = buf_.data() + slot * (D_ + Dv_) * lg_.Lext;
    T* vt = kt + D_ * lg_.Lext;
    const int64_t id = row_index(g_, g_.kv_heads, b, hk, x0, x1);
    if (tag_[slot] != id) {
      const int64_t x[kAxes] = {x0, x1, 0};
      transpose_row(lg_, gh_, kp_ + vk_.at(b, x, hk), vk_.x[2], D_, zeros_.data(), kt);
      transpose_row(lg_, gh_, vp_ + vv_.at(b, x, hk), vv_.x[2], Dv_, zeros_.data(), vt);
      tag_[slot] = id;
      const int64_t x1n = x1 + g_.ax[1].d;  // the row the window reaches next, as the query rows step along axis 1
      if (x1n < g_.S[1]) {
        const int64_t xn[kAxes] = {x0, x1n, 0};
        prefetch_columns(kp_ + vk_.at(b, xn, hk), vk_.x[2], lg_.L, D_);
        prefetch_columns(vp_ + vv_.at(b, xn, hk), vv_.x[2], lg_.L, Dv_);
      }
    }
    return {kt, vt};
  }

 private:
  const Geometry& g_;
  const LaneGeom& lg_;
  const Ghosts& gh_;
  const T *kp_, *vp_;
  View vk_, vv_;
  int64_t D_, Dv_, m0_ = 1, m1_ = 1;
  std::vector<T> buf_, zeros_;
  std::vector<int64_t> tag_;
};

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

// A row's blocks of VL queries run in tiles: the scores of a tile stay in L1 beside one transposed key row,
// which every block of the tile reads before the next row is touched (blocks of one tile share most of the
// cache lines they read).
template <typename T>
int64_t tile_blocks(const LaneGeom& lg, int64_t K, int64_t arrays) {
  const int64_t blocks = lg.Lp / lanes<T>();
  const int64_t fit = std::max<int64_t>(1, 12288 / (arrays * K * static_cast<int64_t>(sizeof(vec<T>))));
  const int64_t tiles = (blocks + fit - 1) / fit;
  return (blocks + tiles - 1) / tiles;
}

// S[blk * K + n * k + u] (VL lanes each) = bias + a . key diagonals, for the nb blocks of a tile starting at column
// t0 (a: the blocks' transposed queries, block blk at a + blk * a_blk, dims a_dim apart), key rows row by row
template <typename T>
inline void tile_dots(const LaneGeom& lg, const T* a, int64_t a_blk, int64_t a_dim, const T* const* rows,
                      const RowSlot* slots, int64_t n_slots, const T* bias_h, int64_t t0, int64_t nb, int64_t D,
                      int64_t K, vec<T>* S) {
  constexpr int64_t VL = lanes<T>();
  const int64_t k = lg.k;
  for (int64_t n = 0; n < n_slots; ++n) {
    const T* bt = bias_h ? bias_h + (lg.has_rpb ? slots[n].rel01 : 0) * k * lg.Lp : nullptr;
    for (int64_t blk = 0; blk < nb; ++blk) {
      const int64_t j0 = t0 + blk * VL;
      diag_dots(a + blk * a_blk, a_dim, rows[n] + lg.PL + j0 - lg.off * lg.d, lg.Lext, lg.d, D,
                bt ? bt + j0 : nullptr, lg.Lp, k, S + blk * K + n * k);
    }
  }
}

// out[blk * D + i] = sum_{n, u} w[blk * K + n * k + u] * (diagonal u of rows[n], dim i) for the nb blocks of a tile:
// dims in chunks of accumulators, every block of the tile per chunk
template <typename T>
inline void tile_mix(const LaneGeom& lg, const vec<T>* w, const T* const* rows, int64_t n_slots, int64_t t0,
                     int64_t nb, int64_t D, int64_t K, vec<T>* out) {
  constexpr int64_t VL = lanes<T>();
  for (int64_t i0 = 0; i0 < D; i0 += kChunk)
    for (int64_t blk = 0; blk < nb; ++blk)
      diag_mix_chunk(w + blk * K, rows, lg.PL + t0 + blk * VL - lg.off * lg.d, n_slots, lg.k, lg.Lext, lg.d, i0, D,
                     out + blk * D);
}

template <typename T>
void lane_forward(const Geometry& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const T* rpb,
                  double scale_d, at::Tensor& out, at::Tensor& lse) {
  constexpr int64_t VL = lanes<T>();
  const LaneGeom lg = lane_geom<T>(g, rpb != nullptr);
  const Ghosts gh = make_ghosts(lg);
  const int64_t D = g.D, Dv = g.Dv, H = g.heads, N = g.n_queries(), K = g.K, kk = lg.k, L = lg.L;
  const int64_t NB = tile_blocks<T>(lg, K, 1);
  std::vector<T> bias, valid;
  lane_tables<T>(g, lg, rpb, bias, valid);
  const View vq = view_of(q), vo = view_of(out);
  const T* qp = q.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  parallel_rows(lg.rows, lg.Lp * K * (D + Dv), [&](int64_t begin, int64_t end) {
    RowCache<T> cache(g, lg, gh, k, v);
    std::vector<RowSlot> slots(lg.K01);
    std::vector<T> qT(NB * D * VL);
    std::vector<vec<T>> S(NB * K), acc(NB * Dv), inv(NB);
    std::vector<const T*> kt(lg.K01), vt(lg.K01);
    for (int64_t item = begin; item < end; ++item) {
      const RowItem r = row_item(g, item, H);
      if (item + 1 < end) {
        const RowItem rn = row_item(g, item + 1, H);
        const int64_t yn[kAxes] = {rn.y[0], rn.y[1], 0};
        prefetch_columns(qp + vq.at(rn.b, yn, rn.h), vq.x[2], L, D);
      }
      const int64_t n_slots = row_slots(g, r.y, slots.data());
      const int64_t y[kAxes] = {r.y[0], r.y[1], 0};
      const T* qsrc = qp + vq.at(r.b, y, r.h);
      T* odst = op + vo.at(r.b, y, r.h);
      const int64_t qcs = vq.x[2], ocs = vo.x[2];
      const T* bias_h = lg.bias_rows ? bias.data() + r.h * lg.bias_rows * kk * lg.Lp : nullptr;
      const int64_t nS = n_slots * kk;
      T* lrow = lp + (r.b * N + (r.y[0] * g.S[1] + r.y[1]) * g.S[2]) * H + r.h;
      for (int64_t n = 0; n < n_slots; ++n)
        std::tie(kt[n], vt[n]) = cache.get(r.b, r.h / g.group, slots[n].x0, slots[n].x1);
      for (int64_t t0 = 0; t0 < L; t0 += NB * VL) {
        const int64_t nb = std::min(NB, (L - t0 + VL - 1) / VL);
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t j0 = t0 + blk * VL;
          to_lanes(qsrc + j0 * qcs, qcs, std::min(VL, L - j0), D, scale, qT.data() + blk * D * VL, VL);
        }
        tile_dots(lg, qT.data(), D * VL, VL, kt.data(), slots.data(), n_slots, bias_h, t0, nb, D, K, S.data());
        for (int64_t blk = 0; blk < nb; ++blk) {
          vec<T>* Sb = S.data() + blk * K;
          vec<T> mx = splat(-std::numeric_limits<T>::infinity());
          for (int64_t n = 0; n < nS; ++n) mx = vmax<T>(Sb[n], mx);
          vec<T> sum{};
          for (int64_t n = 0; n < nS; ++n) {
            Sb[n] = vexp(Sb[n] - mx);
            sum += Sb[n];
          }
          inv[blk] = T(1) / sum;
          const int64_t j0 = t0 + blk * VL;
          const vec<T> lse_b = mx + vlog_ge1<T>(sum);
          for (int64_t t = 0; t < std::min(VL, L - j0); ++t) lrow[(j0 + t) * H] = lse_b[t];
        }
        tile_mix(lg, S.data(), vt.data(), n_slots, t0, nb, Dv, K, acc.data());
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t j0 = t0 + blk * VL;
          vec<T>* ab = acc.data() + blk * Dv;
          for (int64_t i = 0; i < Dv; ++i) ab[i] *= inv[blk];
          from_lanes(reinterpret_cast<const T*>(ab), VL, std::min(VL, L - j0), Dv, T(1), odst + j0 * ocs, ocs);
        }
      }
    }
  });
}

// Backward per (batch, kv head) plane: a plane holds every query row whose windows reach its key rows, so pass 1
// over its query rows, its dRPB share and pass 2 over its key rows need nothing from other planes. With planes
// enough for the threads, each thread takes whole planes in turn, all three steps, with buffers of one plane (a few
// MB, still cached for pass 2), in one parallel region: no thread waits for another until the end. Under OpenMP's
// default wait policy every barrier and every gap between regions spins for milliseconds, which on a CPU shared with
// other work takes the core a descheduled thread needs (the three regions per group of planes this replaced cost
// that six times per call). With few planes, groups of planes run pass 1, dRPB and pass 2 each parallel over rows.
template <typename T>
void lane_backward(const Geometry& g, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const T* rpb, const at::Tensor& lse, const DeltaSource<T>& delta, double scale_d,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, T* drpb) {
  constexpr int64_t VL = lanes<T>();
  const LaneGeom lg = lane_geom<T>(g, rpb != nullptr);
  const Ghosts gh = make_ghosts(lg);
  const int64_t D = g.D, Dv = g.Dv, H = g.heads, N = g.n_queries(), Lext = lg.Lext, Lp = lg.Lp, kk = lg.k;
  const int64_t L = lg.L, K01 = lg.K01, K = g.K;
  const int64_t NB = tile_blocks<T>(lg, K, 2);
  // planes and their rows: query rows (b, h, y0, y1) of a plane's heads are contiguous, as are its key rows
  const int64_t planes = g.B * g.kv_heads, plane_rows = g.S[0] * g.S[1], plane_qrows = g.group * plane_rows;
  // Pass 2 (below) has two forms: while one key row's per-(dim, slot) sums would fit in L2, they are products in
  // the query lanes (lane_outer, few loads per FMA) folded onto key columns, a few dims at a time (in L1); on
  // longer rows / larger windows each block of key columns gathers its slots straight from the pass-1 rows
  // (key_lane, no intermediate buffer), which then are Ls long: the Lp query columns between zero margins, so that
  // any diagonal is a plain load.
  const int64_t Dm = std::max(D, Dv), base0 = lg.PL - lg.off * lg.d;  // query j, slot u: key column base0 + j + d u
  const int64_t fmargin = (lg.PL + lg.d * kk + VL + VL - 1) / VL * VL, pw = fmargin + Lp + fmargin;
  const bool fold = kk * Dm * pw * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 18);
  const int64_t margin = fold ? 0 : (lg.d * kk + VL + VL - 1) / VL * VL, Ls = margin + Lp + margin;
  const int64_t qrow_size = (K01 * kk * 2 + D + Dv) * Ls;
  const int64_t threads = at::get_num_threads(), plane_bytes = plane_qrows * qrow_size * int64_t(sizeof(T));
  const bool by_plane = planes >= 4 * threads && plane_bytes <= (int64_t(1) << 24);
  std::vector<T> bias, valid;
  lane_tables<T>(g, lg, rpb, bias, valid);
  // dRPB per (head, row offset, lane slot, query column): each plane sums its rows' dS into a table of its own
  // (rows in order), the planes' tables are added in plane order: the same sums however planes meet threads
  const int64_t dtab = lg.R01 * kk * Lp;
  std::vector<T> dbias(drpb ? H * dtab : 0, T(0));
  const View vq = view_of(q), vg = view_of(dout), vdq = view_of(dq), vdk = view_of(dk), vdv = view_of(dv);
  const T *qp = q.data_ptr<T>(), *gp = dout.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  const Axis &a0 = g.ax[0], &a1 = g.ax[1];

  // per query row of a block of rows: P and dS per (row slot, lane slot, lane), scaled q and dO transposed, for
  // pass 2; P, dS, QT, GT point at the column data of the block's first row (row r at r * Ls)
  struct Rows {
    at::Tensor store;
    T *P = nullptr, *dS = nullptr, *QT = nullptr, *GT = nullptr;
  };
  auto make_rows = [&](int64_t n_rows) {
    Rows b;
    const int64_t slots = n_rows * K01 * kk * Ls;
    b.store = at::empty({(2 * K01 * kk + D + Dv) * n_rows * Ls}, q.options());
    T* x = b.store.template data_ptr<T>();
    for (int64_t r = 0, n = b.store.numel() / Ls; r < n && margin > 0; ++r) {  // margins: zero once, pass 1
      std::fill(x + r * Ls, x + r * Ls + margin, T(0));                       // writes the columns between
      std::fill(x + r * Ls + margin + Lp, x + (r + 1) * Ls, T(0));
    }
    b.P = x + margin;
    b.dS = b.P + slots;
    b.QT = b.dS + slots;
    b.GT = b.QT + n_rows * D * Ls;
    return b;
  };

  // pass 1, query rows row0 + [begin, end): P, dP = dO . v, dS = P (dP - delta), dQ = scale * sum dS k
  auto pass1 = [&](const Rows& buf, int64_t row0, int64_t begin, int64_t end) {
    RowCache<T> cache(g, lg, gh, k, v);
    std::vector<RowSlot> slots(K01);
    std::vector<vec<T>> S(NB * K), dP(NB * K), acc(NB * D), m(NB), dl(NB);
    std::vector<const T*> kt(K01), vt(K01);
    for (int64_t local = begin; local < end; ++local) {
      const int64_t item = row0 + local;
      const RowItem r = row_item(g, item, H);
      if (local + 1 < end) {  // the next query row's q, dO (and O, for delta)
        const RowItem rn = row_item(g, item + 1, H);
        const int64_t yn[kAxes] = {rn.y[0], rn.y[1], 0};
        prefetch_columns(qp + vq.at(rn.b, yn, rn.h), vq.x[2], L, D);
        prefetch_columns(gp + vg.at(rn.b, yn, rn.h), vg.x[2], L, Dv);
        if (delta.out) prefetch_columns(delta.out + delta.vo.at(rn.b, yn, rn.h), delta.vo.x[2], L, Dv);
      }
      const int64_t n_slots = row_slots(g, r.y, slots.data());
      const int64_t y[kAxes] = {r.y[0], r.y[1], 0};
      const int64_t qcs = vq.x[2], gcs = vg.x[2], dqcs = vdq.x[2];
      const T* bias_h = lg.bias_rows ? bias.data() + r.h * lg.bias_rows * kk * Lp : nullptr;
      const int64_t at_row = (r.b * N + (r.y[0] * g.S[1] + r.y[1]) * g.S[2]) * H + r.h;
      const int64_t at = row_index(g, H, r.b, r.h, r.y[0], r.y[1]) - row0;  // the row's place in buf
      T* QT = buf.QT + at * D * Ls;
      T* GT = buf.GT + at * Dv * Ls;
      const T* grow = gp + vg.at(r.b, y, r.h);
      for (int64_t n = 0; n < n_slots; ++n)
        std::tie(kt[n], vt[n]) = cache.get(r.b, r.h / g.group, slots[n].x0, slots[n].x1);
      for (int64_t t0 = 0; t0 < L; t0 += NB * VL) {
        const int64_t nb = std::min(NB, (L - t0 + VL - 1) / VL);
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t j0 = t0 + blk * VL, nl = std::min(VL, L - j0);
          // transposed blocks of scaled q and dO go straight into the pass-2 buffers ([dim][Lp] per row)
          to_lanes(qp + vq.at(r.b, y, r.h) + j0 * qcs, qcs, nl, D, scale, QT + j0, Ls);
          to_lanes(grow + j0 * gcs, gcs, nl, Dv, T(1), GT + j0, Ls);
          m[blk] = splat(std::numeric_limits<T>::infinity());
          dl[blk] = vec<T>{};
          for (int64_t t = 0; t < nl; ++t) {
            m[blk][t] = lp[at_row + (j0 + t) * H];
            dl[blk][t] = delta(at_row + (j0 + t) * H, grow + (j0 + t) * gcs, r.b, y, r.h, j0 + t);
          }
        }
        tile_dots(lg, QT + t0, VL, Ls, kt.data(), slots.data(), n_slots, bias_h, t0, nb, D, K, S.data());
        tile_dots<T>(lg, GT + t0, VL, Ls, vt.data(), slots.data(), n_slots, nullptr, t0, nb, Dv, K, dP.data());
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t j0 = t0 + blk * VL;
          vec<T>* Sb = S.data() + blk * K;
          const vec<T>* dPb = dP.data() + blk * K;
          for (int64_t n = 0; n < n_slots; ++n) {
            T* Pd = buf.P + ((at * K01 + slots[n].slot01) * kk) * Ls + j0;
            T* dSd = buf.dS + ((at * K01 + slots[n].slot01) * kk) * Ls + j0;
            for (int64_t u = 0; u < kk; ++u) {
              const vec<T> ok = load(valid.data() + u * Lp + j0);
              const vec<T> p = ok != T(0) ? vexp(Sb[n * kk + u] - m[blk]) : vec<T>{};
              const vec<T> ds = ok != T(0) ? p * (dPb[n * kk + u] - dl[blk]) : vec<T>{};
              store(Pd + u * Ls, p);
              store(dSd + u * Ls, ds);
              Sb[n * kk + u] = ds;
            }
          }
        }
        tile_mix(lg, S.data(), kt.data(), n_slots, t0, nb, D, K, acc.data());
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t j0 = t0 + blk * VL;
          from_lanes(reinterpret_cast<const T*>(acc.data() + blk * D), VL, std::min(VL, L - j0), D, scale,
                     dq.data_ptr<T>() + vdq.at(r.b, y, r.h) + j0 * dqcs, dqcs);
        }
      }
    }
  };

  // dRPB of plane p (its query rows from row0 in buf) into its table(s) at part: one per query head of the plane
  auto plane_drpb = [&](const Rows& buf, int64_t p, int64_t row0, T* part) {
    std::vector<RowSlot> slots(K01);
    const int64_t b = p / g.kv_heads;
    std::fill(part, part + g.group * dtab, T(0));
    for (int64_t h = (p % g.kv_heads) * g.group, hl = 0; hl < g.group; ++h, ++hl)
      for (int64_t y0 = 0; y0 < g.S[0]; ++y0)
        for (int64_t y1 = 0; y1 < g.S[1]; ++y1) {
          const int64_t yy[2] = {y0, y1}, local = row_index(g, H, b, h, y0, y1) - row0;
          const int64_t n_slots = row_slots(g, yy, slots.data());
          for (int64_t n = 0; n < n_slots; ++n) {
            const T* src = buf.dS + (local * K01 + slots[n].slot01) * kk * Ls;
            T* dst = part + (hl * lg.R01 + slots[n].rel01) * kk * Lp;
            for (int64_t u = 0; u < kk; ++u)
              for (int64_t j0 = 0; j0 < Lp; j0 += VL)
                store(dst + u * Lp + j0, load(dst + u * Lp + j0) + load(src + u * Ls + j0));
          }
        }
  };

  // pass 2, key rows krow0 + [begin, end) (and kv head): dK = sum dS (scale q), dV = sum P dO over the query rows
  // (of the query heads sharing the kv head; in buf from row0) whose windows hold it. Slot u of query column j is
  // extended key column base0 + j + d u: per block of query columns the sums over query rows are products in the
  // lanes (lane_outer) and each key column gathers its slots' sums with shifted loads, or (long rows) blocks of key
  // columns gather their slots' diagonals from the query rows' buffers (key_lane); then the ghosts fold onto their
  // keys.
  const int64_t e_lo = gh.lo / VL * VL;  // key-column blocks that any query reaches
  auto pass2 = [&](const Rows& buf, int64_t row0, int64_t krow0, int64_t begin, int64_t end) {
    std::vector<T> dKT(D * Lext), dVT(Dv * Lext), part(fold ? kk * kOuterI * pw : 0, T(0));
    std::vector<vec<T>> col(Dm);
    std::vector<const T*> qt, gt, dsr, pr;  // per query row holding this key row
    for (int64_t local = begin; local < end; ++local) {
      const RowItem r = row_item(g, krow0 + local, g.kv_heads);  // r.y is the key row, r.h the kv head
      qt.clear();
      gt.clear();
      dsr.clear();
      pr.clear();
      for (int64_t h = r.h * g.group; h < (r.h + 1) * g.group; ++h)
        for (int64_t i0 = a0.inv_off[r.y[0]]; i0 < a0.inv_off[r.y[0] + 1]; ++i0)
          for (int64_t i1 = a1.inv_off[r.y[1]]; i1 < a1.inv_off[r.y[1] + 1]; ++i1) {
            const int64_t qlocal = row_index(g, H, r.b, h, a0.inv_q[i0], a1.inv_q[i1]) - row0;
            const int64_t slot01 = a0.inv_c[i0] * a1.k + a1.inv_c[i1];
            pr.push_back(buf.P + (qlocal * K01 + slot01) * kk * Ls);
            dsr.push_back(buf.dS + (qlocal * K01 + slot01) * kk * Ls);
            qt.push_back(buf.QT + qlocal * D * Ls);
            gt.push_back(buf.GT + qlocal * Dv * Ls);
          }
      const int64_t nq = static_cast<int64_t>(qt.size());
      for (int pass = 0; fold && pass < 2; ++pass) {
        const int64_t Dx = pass == 0 ? D : Dv;
        T* dst = pass == 0 ? dKT.data() : dVT.data();
        // a few dims at a time: their slot sums (kk * kOuterI rows of pw) stay in L1 until folded
        for (int64_t i0 = 0; i0 < Dx; i0 += kOuterI) {
          const int64_t nd = std::min(kOuterI, Dx - i0);
          for (int64_t j0 = 0; j0 < L; j0 += VL)
            lane_outer(pass == 0 ? dsr.data() : pr.data(), pass == 0 ? qt.data() : gt.data(), nq, Ls, j0, kk, i0, nd,
                       pw, part.data() + fmargin);
          fold_slots(part.data() + fmargin, pw, kk, lg.d, base0, nd, Lext, dst + i0 * Lext, Lext);
        }
      }
      if (!fold) {
        std::fill(dKT.begin(), dKT.end(), T(0));
        std::fill(dVT.begin(), dVT.end(), T(0));
      }
      for (int64_t e0 = e_lo; !fold && e0 < gh.hi; e0 += VL) {
        key_lane(dsr.data(), qt.data(), nq, kk, lg.d, Ls, e0 - base0, D, col.data());
        for (int64_t i = 0; i < D; ++i) store(dKT.data() + i * Lext + e0, col[i]);
        key_lane(pr.data(), gt.data(), nq, kk, lg.d, Ls, e0 - base0, Dv, col.data());
        for (int64_t i = 0; i < Dv; ++i) store(dVT.data() + i * Lext + e0, col[i]);
      }
      fold_ghosts(gh, D, dKT.data(), Lext);
      fold_ghosts(gh, Dv, dVT.data(), Lext);
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
  };

  // planes in batches: by plane, as many as keep their dRPB tables under 32 MB; else groups of planes whose
  // buffers hold up to 16 MB, rows enough for the threads
  int64_t per_batch;
  if (by_plane) {
    per_batch = drpb ? std::max<int64_t>(1, (int64_t(1) << 25) / (g.group * dtab * int64_t(sizeof(T)))) : planes;
  } else {
    per_batch = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(1, plane_bytes));
    per_batch = std::max(per_batch, (8 * threads + plane_qrows - 1) / plane_qrows);
  }
  per_batch = std::min(per_batch, planes);
  std::vector<T> parts(drpb ? per_batch * g.group * dtab : 0);
  Rows shared;  // group mode: the buffers of one group
  if (!by_plane) shared = make_rows(per_batch * plane_qrows);
  for (int64_t p0 = 0; p0 < planes; p0 += per_batch) {
    const int64_t np = std::min(planes - p0, per_batch);
    if (by_plane) {
      std::atomic<int64_t> next{p0};
      run_team(std::min(threads, np), [&] {
        const Rows buf = make_rows(plane_qrows);
        for (int64_t p = next.fetch_add(1); p < p0 + np; p = next.fetch_add(1)) {
          pass1(buf, p * plane_qrows, 0, plane_qrows);
          if (drpb) plane_drpb(buf, p, p * plane_qrows, parts.data() + (p - p0) * g.group * dtab);
          pass2(buf, p * plane_qrows, p * plane_rows, 0, plane_rows);
        }
      });
    } else {
      const int64_t row0 = p0 * plane_qrows, krow0 = p0 * plane_rows;
      parallel_rows(np * plane_qrows, Lp * K * (2 * D + Dv),
                    [&](int64_t begin, int64_t end) { pass1(shared, row0, begin, end); });
      if (drpb)
        at::parallel_for(p0, p0 + np, 1, [&](int64_t pa, int64_t pb) {
          for (int64_t p = pa; p < pb; ++p) plane_drpb(shared, p, row0, parts.data() + (p - p0) * g.group * dtab);
        });
      parallel_rows(np * plane_rows, g.group * Lp * K * (D + Dv),
                    [&](int64_t begin, int64_t end) { pass2(shared, row0, krow0, begin, end); });
    }
    if (drpb)  // the batch's tables onto the heads' tables, in plane order
      for (int64_t p = p0; p < p0 + np; ++p)
        for (int64_t hl = 0; hl < g.group; ++hl) {
          T* dst = dbias.data() + ((p % g.kv_heads) * g.group + hl) * dtab;
          const T* src = parts.data() + ((p - p0) * g.group + hl) * dtab;
          for (int64_t i = 0; i < dtab; ++i) dst[i] += src[i];
        }
  }

  if (drpb) {  // fold the per-lane tables onto the RPB table
    std::fill(drpb, drpb + H * g.R, T(0));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t r01 = 0; r01 < lg.R01; ++r01)
        for (int64_t u = 0; u < kk; ++u)
          for (int64_t j = 0; j < L; ++j) {
            int64_t rel = 0;
            if (lane_key(lg, j, u, &rel) < 0) continue;
            drpb[h * g.R + r01 * lg.R2 + rel] += dbias[((h * lg.R01 + r01) * kk + u) * Lp + j];
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
                  const at::Tensor& v, const at::Tensor* rpb, const at::Tensor& lse, const DeltaSource<T>& delta,
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
    const c10::optional<at::Tensor>& rpb, const at::Tensor& lse, const c10::optional<at::Tensor>& delta,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation, const c10::List<bool>& is_causal,
    double scale, const c10::optional<at::Tensor>& out, const c10::optional<at::Tensor>& grad_lse) {
  check_tensors(query, key, value, rpb);
  const at::Tensor q = unit_last(query), k = unit_last(key), v = unit_last(value);
  const at::Tensor go = unit_last(grad_out.to(q.scalar_type()));
  const at::Tensor l = lse.to(q.scalar_type()).contiguous();
  std::vector<int64_t> oshape(q.sizes().begin(), q.sizes().end());
  oshape.back() = v.size(-1);
  TORCH_CHECK(go.sizes() == at::IntArrayRef(oshape), "na_cpu: grad_out must be [B, *spatial, heads, value head_dim]");
  TORCH_CHECK(l.sizes() == q.sizes().slice(0, q.dim() - 1), "na_cpu: lse must be [B, *spatial, heads]");
  // delta = sum(dO * O) - dlse: given, or computed by the kernel from out (and grad_lse)
  TORCH_CHECK(delta.has_value() != out.has_value(), "na_cpu: pass exactly one of delta and out");
  TORCH_CHECK(!grad_lse.has_value() || out.has_value(), "na_cpu: grad_lse goes with out (delta includes it)");
  at::Tensor dl, o, dlse;
  if (delta.has_value()) {
    dl = delta->to(q.scalar_type()).contiguous();
    TORCH_CHECK(dl.sizes() == l.sizes(), "na_cpu: delta must be [B, *spatial, heads]");
  } else {
    o = unit_last(out->to(q.scalar_type()));
    TORCH_CHECK(o.sizes() == at::IntArrayRef(oshape), "na_cpu: out must be [B, *spatial, heads, value head_dim]");
    if (grad_lse.has_value()) {
      dlse = grad_lse->to(q.scalar_type()).contiguous();
      TORCH_CHECK(dlse.sizes() == l.sizes(), "na_cpu: grad_lse must be [B, *spatial, heads]");
    }
  }
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
    DeltaSource<scalar_t> ds;
    ds.Dv = g.Dv;
    if (dl.defined()) {
      ds.given = dl.data_ptr<scalar_t>();
    } else {
      ds.out = o.data_ptr<scalar_t>();
      ds.vo = view_of(o);
      ds.dlse = dlse.defined() ? dlse.data_ptr<scalar_t>() : nullptr;
    }
    run_backward<scalar_t>(g, go, q, k, v, rpb.has_value() ? &table : nullptr, l, ds, scale, dq, dk, dv,
                           drpb.has_value() ? &*drpb : nullptr);
  });
  return {dq, dk, dv, drpb};
}

// What this build of the file was compiled for (visionattn.kernels._na_cpu.build_info): the instruction set whose
// vectors the lane path uses, their width, the vector registers assumed for register blocking. One string literal,
// so that a compile-only check can find it in the object file.
#define NA_STR2(x) #x
#define NA_STR(x) NA_STR2(x)
std::string build_info() {
  return "isa=" NA_ISA " vector_bytes=" NA_STR(NA_VEC_BYTES) " vector_regs=" NA_STR(NA_VEC_REGS);
}

}  // namespace

TORCH_LIBRARY(visionattn_cpu, m) {
  m.def(
      "na_forward(Tensor query, Tensor key, Tensor value, Tensor? rpb, int[] kernel_size, int[] stride, "
      "int[] dilation, bool[] is_causal, float scale) -> (Tensor, Tensor)");
  m.def(
      "na_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor? rpb, Tensor lse, Tensor? delta, "
      "int[] kernel_size, int[] stride, int[] dilation, bool[] is_causal, float scale, Tensor? out=None, "
      "Tensor? grad_lse=None) "
      "-> (Tensor, Tensor, Tensor, Tensor?)");
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(visionattn_cpu, CPU, m) {
  m.impl("na_forward", &na_forward);
  m.impl("na_backward", &na_backward);
}
