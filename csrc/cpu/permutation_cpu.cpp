#include "permutation.h"

namespace fu_fast {

void permutation_ranks_cpu(uint64_t key, int64_t n, int64_t* ranks) {
  const PermutationKey p = make_permutation_key(key, n);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t u = 0; u < n; ++u) ranks[u] = permutation_rank(u, p);
}

}  // namespace fu_fast
