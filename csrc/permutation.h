// Keyed permutation ranks: rank_r(u) of docs/definitions.md.
//
// rank(u) is a bijection on {0, ..., n-1} computed on the fly from a 64-bit key, so a
// mask never has to be stored or drawn per batch: every backend and every batch size
// sees the same ablated sets.
//
// The exact function (mirrored bit for bit by fu_fast/reference.py):
//   bits      = number of bits of n-1 (0 for n = 1)
//   half      = max(1, ceil(bits / 2));  domain = 2^(2*half) >= n  (at most 4n)
//   feistel(x): L = x >> half, R = x & (2^half - 1); 6 rounds of
//               (L, R) <- (R, L xor (mix64(R xor (key + round * GOLDEN)) & (2^half - 1)))
//               result (L << half) | R
//   rank(u)   = cycle walk: x = feistel(u); while x >= n: x = feistel(x)
// mix64 is the splitmix64 finaliser; GOLDEN = 0x9e3779b97f4a7c15. All arithmetic is
// modulo 2^64. A Feistel network is a bijection on the 2^(2*half) domain whatever its
// round function, and cycle walking restricts a bijection on a superset to one on
// [0, n); since the domain is at most 4n, the walk takes fewer than 4 steps on average.
#pragma once

#include "common.h"

namespace fu_fast {

constexpr int kFeistelRounds = 6;
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

FU_FAST_HD uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xbf58476d1ce4e5b9ULL;
  z ^= z >> 27;
  z *= 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z;
}

struct PermutationKey {
  uint64_t key;
  int64_t n;
  int half_bits;
  uint64_t half_mask;
};

FU_FAST_HD PermutationKey make_permutation_key(uint64_t key, int64_t n) {
  int bits = 0;
  for (uint64_t v = (n > 1) ? static_cast<uint64_t>(n - 1) : 0; v != 0; v >>= 1) ++bits;
  int half = (bits + 1) / 2;
  if (half < 1) half = 1;
  PermutationKey p;
  p.key = key;
  p.n = n;
  p.half_bits = half;
  p.half_mask = (uint64_t{1} << half) - 1;
  return p;
}

FU_FAST_HD uint64_t feistel(uint64_t x, const PermutationKey& p) {
  uint64_t left = x >> p.half_bits;
  uint64_t right = x & p.half_mask;
  for (int round = 0; round < kFeistelRounds; ++round) {
    const uint64_t f = mix64(right ^ (p.key + static_cast<uint64_t>(round) * kGolden)) & p.half_mask;
    const uint64_t next_right = left ^ f;
    left = right;
    right = next_right;
  }
  return (left << p.half_bits) | right;
}

FU_FAST_HD int64_t permutation_rank(int64_t u, const PermutationKey& p) {
  uint64_t x = feistel(static_cast<uint64_t>(u), p);
  while (x >= static_cast<uint64_t>(p.n)) x = feistel(x, p);
  return static_cast<int64_t>(x);
}

#if !defined(__CUDACC_RTC__)  // host entry points; NVRTC compiles device code only
// ranks[u] = rank(u) for u in [0, n).
void permutation_ranks_cpu(uint64_t key, int64_t n, int64_t* ranks);

#ifdef FU_FAST_WITH_CUDA
// CUDA twin (csrc/cuda/ablation_cuda.cu): ranks in device memory, queued on `stream`.
void permutation_ranks_cuda(uint64_t key, int64_t n, int64_t* ranks, void* stream);
#endif
#endif

}  // namespace fu_fast
