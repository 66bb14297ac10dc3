// The emulated CUDA runtime declared in cuda_runtime.h, and the extern "C" controls the tests
// reach through ctypes (the same loaded image as the pybind11 module).
#include <cuda_runtime.h>

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

thread_local uint3 threadIdx{0, 0, 0};
thread_local uint3 blockIdx{0, 0, 0};
thread_local dim3 blockDim{0, 0, 0};
thread_local dim3 gridDim{0, 0, 0};

namespace {

// What the emulator reports as both runtime and driver version: CUDA 13.0, which the real
// build links statically.
constexpr int kEmulatedVersion = 13000;

// sm_80 / sm_90 launch limits.
constexpr unsigned int kMaxGridX = 2147483647u, kMaxGridYZ = 65535u;
constexpr unsigned int kMaxBlockXY = 1024u, kMaxBlockZ = 64u, kMaxThreadsPerBlock = 1024u;
// Dynamic shared memory a kernel may take without opting in with cudaFuncSetAttribute (which
// the emulator does not provide, so a kernel that needs it does not compile here).
constexpr size_t kMaxDynamicShared = 48 * 1024;

// The real runtime keeps the last error per host thread; cudaGetLastError returns and clears it.
thread_local cudaError_t t_last_error = cudaSuccess;

std::mutex g_atomics;
// One launch at a time: __shared__ arrays are function-statics, and the statistics below are
// shared by every launch.
std::mutex g_launches;

struct KernelStats {
  unsigned long long launches = 0, refused = 0, blocks_run = 0;
  int mode = -1;
  dim3 grid{0, 0, 0}, block{0, 0, 0};
};
std::map<std::string, KernelStats> g_stats;
unsigned long long g_first_block = 0, g_last_block = ~0ull;
int g_device_count = 1;

// Unwinds a CUDA thread of a block that has failed, so that every thread of it finishes.
struct Abort {};

unsigned int popcount(unsigned int bits) { return static_cast<unsigned int>(__builtin_popcount(bits)); }

// Parking threads on a 32-bit counter (a futex). With hundreds of threads on a few cores, a
// couple of yields first let the threads the barrier waits for run, and often spare the sleep
// and the wake-up; none, or the many that std::atomic::wait makes, measured slower.
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free,
              "a futex word");

void wait_while_equal(std::atomic<uint32_t>& word, uint32_t value) {
  for (int i = 0; i < 2 && word.load(std::memory_order_acquire) == value; ++i) sched_yield();
  while (word.load(std::memory_order_acquire) == value)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, value, nullptr, nullptr, 0);
}

void wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

std::string where(fu_emu::Site site) { return std::string(site.file) + ":" + std::to_string(site.line); }

std::string block_name() {
  return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ")";
}

// The OS threads running the CUDA threads of one block, reused for every block of a launch, and
// their barriers: __syncthreads over the block's live threads, and per warp the barrier of
// __shfl_down_sync with its exchange buffer. One mutex guards the bookkeeping, which makes the
// deadlock check exact (a block is stuck when every live thread is parked at a barrier that
// cannot complete); threads park on a barrier's generation counter (a futex) without the
// mutex, so a release does not make them queue for it.
class Block {
 public:
  explicit Block(unsigned int threads)
      : threads_(threads), warps_((threads + 31) / 32), warp_barriers_(warps_), active_(warps_),
        exchange_(warps_ * 32) {
    reset();
  }

  // The pool's threads wait here until all of them exist; false when the pool could not be made
  // (then none of them runs the kernel).
  bool wait_for_start() {
    wait_while_equal(started_, kStarting);
    return started_.load() == kStarted;
  }

  void start(bool ok) {
    if (!ok) fail("could not start one OS thread per CUDA thread of the block");
    started_.store(ok ? kStarted : kNotStarted, std::memory_order_release);
    wake_all(started_);
  }

  void syncthreads(fu_emu::Site site) {
    std::unique_lock<std::mutex> lock(mutex_);
    arrive(lock, block_barrier_, live_, site);
  }

  uint64_t shuffle_down(unsigned int thread, unsigned int mask, uint64_t bits, unsigned int delta, int width,
                        fu_emu::Site site) {
    const unsigned int warp = thread / 32, lane = thread % 32;
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
      throw std::runtime_error(where(site) + ": __shfl_down_sync width " + std::to_string(width) +
                               " is not a power of 2 up to 32");
    const unsigned int source = lane + delta, segment_end = (lane / width + 1) * width;
    const bool reads_other = source < segment_end;
    if (reads_other && ((mask >> source) & 1u) == 0)
      throw std::runtime_error(where(site) + ": __shfl_down_sync reads lane " + std::to_string(source) +
                               ", which its mask leaves out");
    std::unique_lock<std::mutex> lock(mutex_);
    if (failed_) throw Abort{};
    if (mask != active_[warp]) {
      fail_locked(where(site) + ": __shfl_down_sync with mask " + std::to_string(mask) + " in warp " +
                  std::to_string(warp) + " of " + block_name() + ", whose running lanes are " +
                  std::to_string(active_[warp]));
      throw Abort{};
    }
    exchange_[warp * 32 + lane] = bits;
    arrive(lock, warp_barriers_[warp], popcount(active_[warp]), site);
    // Nobody writes the exchange buffer again before every lane is past the next barrier.
    const uint64_t result = reads_other ? exchange_[warp * 32 + source] : bits;
    lock.lock();
    arrive(lock, warp_barriers_[warp], popcount(active_[warp]), site);
    return result;
  }

  // The thread has returned from the kernel: it leaves the barriers' counts, as on Volta and
  // later, where the remaining threads of a block may still synchronise.
  void exit_thread(unsigned int thread) {
    std::lock_guard<std::mutex> lock(mutex_);
    const unsigned int warp = thread / 32;
    --live_;
    active_[warp] &= ~(1u << (thread % 32));
    if (block_barrier_.arrived > 0 && block_barrier_.arrived == live_) {
      release(block_barrier_, block_barrier_.arrived);
      wake_all(block_barrier_.generation);
    }
    if (warp_barriers_[warp].arrived > 0)
      fail_locked("a lane of warp " + std::to_string(warp) + " of " + block_name() +
                  " returned while the others wait for it in __shfl_down_sync at " + where(warp_barriers_[warp].site));
    check_deadlock();
  }

  // Every thread calls this after the block; the last one prepares the next block. False when
  // the launch has failed and the threads should stop.
  bool end_block() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (++finished_ < threads_) {
      const uint32_t generation = block_generation_.load(std::memory_order_relaxed);
      lock.unlock();
      wait_while_equal(block_generation_, generation);
    } else {
      reset();
      block_generation_.fetch_add(1, std::memory_order_release);
      lock.unlock();
      wake_all(block_generation_);
    }
    return !failed_.load();
  }

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_locked(message);
  }

  bool failed() const { return failed_.load(); }

  std::string error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

 private:
  struct Barrier {
    std::atomic<uint32_t> generation{0};
    unsigned int arrived = 0;
    fu_emu::Site site{"", 0};
  };

  // Called with the lock held; returns (or throws) with it released.
  void arrive(std::unique_lock<std::mutex>& lock, Barrier& barrier, unsigned int expected, fu_emu::Site site) {
    if (failed_) throw Abort{};
    if (barrier.arrived > 0 && (barrier.site.line != site.line || std::strcmp(barrier.site.file, site.file) != 0)) {
      fail_locked("threads of " + block_name() + " wait at different barriers, " + where(barrier.site) + " and " +
                  where(site) + " (a barrier in divergent code)");
      throw Abort{};
    }
    barrier.site = site;
    if (++barrier.arrived == expected) {
      release(barrier, barrier.arrived - 1);
      lock.unlock();
      wake_all(barrier.generation);
      return;
    }
    ++parked_;
    check_deadlock();
    const uint32_t generation = barrier.generation.load(std::memory_order_relaxed);
    lock.unlock();
    wait_while_equal(barrier.generation, generation);
    if (failed_) throw Abort{};
  }

  // Releases the barrier's waiters (the caller notifies them).
  void release(Barrier& barrier, unsigned int parked_arrivals) {
    parked_ -= parked_arrivals;
    barrier.arrived = 0;
    barrier.generation.fetch_add(1, std::memory_order_release);
  }

  void check_deadlock() {
    if (!failed_ && live_ > 0 && parked_ == live_)
      fail_locked("deadlock in " + block_name() + ": every running thread waits at a barrier that cannot complete");
  }

  // Marks the launch failed and wakes every parked thread, which then unwinds.
  void fail_locked(const std::string& message) {
    if (!failed_) error_ = message;
    failed_ = true;
    const auto wake = [](Barrier& barrier) {
      barrier.generation.fetch_add(1, std::memory_order_release);
      wake_all(barrier.generation);
    };
    wake(block_barrier_);
    for (Barrier& barrier : warp_barriers_) wake(barrier);
  }

  void reset() {
    live_ = threads_;
    parked_ = finished_ = 0;
    block_barrier_.arrived = 0;
    for (Barrier& barrier : warp_barriers_) barrier.arrived = 0;
    for (unsigned int w = 0; w < warps_; ++w) {
      const unsigned int lanes = threads_ - 32 * w < 32 ? threads_ - 32 * w : 32;
      active_[w] = lanes == 32 ? ~0u : (1u << lanes) - 1;
    }
  }

  const unsigned int threads_, warps_;
  std::mutex mutex_;
  Barrier block_barrier_;
  std::vector<Barrier> warp_barriers_;
  std::vector<unsigned int> active_;  // per warp, the lanes that have not returned
  std::vector<uint64_t> exchange_;
  unsigned int live_ = 0, parked_ = 0, finished_ = 0;
  static constexpr uint32_t kStarting = 0, kStarted = 1, kNotStarted = 2;
  std::atomic<uint32_t> started_{kStarting}, block_generation_{0};
  std::atomic<bool> failed_{false};
  std::string error_;
};

// The block the calling OS thread runs a CUDA thread of (null when the kernel runs its
// threads one after another), that thread's linear index, and the running kernel's name.
thread_local Block* t_block = nullptr;
thread_local unsigned int t_thread = 0;
thread_local const char* t_kernel = nullptr;

uint3 thread_index(unsigned int t, dim3 block) { return uint3{t % block.x, t / block.x % block.y, t / block.x / block.y}; }

uint3 block_index(unsigned long long b, dim3 grid) {
  return uint3{static_cast<unsigned int>(b % grid.x), static_cast<unsigned int>(b / grid.x % grid.y),
               static_cast<unsigned int>(b / grid.x / grid.y)};
}

cudaError_t check_config(const fu_emu::LaunchConfig& config, unsigned int max_threads) {
  const dim3 g = config.grid, b = config.block;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > kMaxGridX || g.y > kMaxGridYZ || g.z > kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > kMaxBlockXY || b.y > kMaxBlockXY || b.z > kMaxBlockZ ||
      static_cast<unsigned long long>(b.x) * b.y * b.z > kMaxThreadsPerBlock)
    return cudaErrorInvalidConfiguration;
  if (config.shared > kMaxDynamicShared) return cudaErrorInvalidConfiguration;
  // More threads than the kernel's __launch_bounds__ promised: the driver refuses the launch.
  if (max_threads != 0 && b.x * b.y * b.z > max_threads) return cudaErrorLaunchOutOfResources;
  return cudaSuccess;
}

void run_sequential(const fu_emu::LaunchConfig& config, unsigned long long first, unsigned long long last,
                    void (*body)(void*), void* context) {
  const unsigned int threads = config.block.x * config.block.y * config.block.z;
  t_block = nullptr;
  for (unsigned long long b = first; b < last; ++b) {
    blockIdx = block_index(b, config.grid);
    for (unsigned int t = 0; t < threads; ++t) {
      threadIdx = thread_index(t, config.block);
      body(context);
    }
  }
}

void run_threaded(const char* kernel, const fu_emu::LaunchConfig& config, unsigned long long first,
                  unsigned long long last, void (*body)(void*), void* context) {
  const unsigned int threads = config.block.x * config.block.y * config.block.z;
  Block block(threads);
  std::vector<std::thread> pool;
  bool started = true;
  try {
    for (unsigned int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        blockDim = config.block;
        gridDim = config.grid;
        threadIdx = thread_index(t, config.block);
        t_block = &block;
        t_thread = t;
        t_kernel = kernel;
        if (!block.wait_for_start()) return;
        for (unsigned long long b = first; b < last; ++b) {
          blockIdx = block_index(b, config.grid);
          try {
            body(context);
          } catch (const Abort&) {
          } catch (const std::exception& e) {
            block.fail(e.what());
          } catch (...) {
            block.fail("a CUDA thread threw an exception that is not a std::exception");
          }
          block.exit_thread(t);
          if (!block.end_block()) break;
        }
      });
    }
  } catch (const std::system_error&) {
    started = false;
  }
  block.start(started);
  for (std::thread& thread : pool) thread.join();
  if (block.failed()) throw std::runtime_error(std::string("fu_emu: kernel ") + kernel + ": " + block.error());
}

}  // namespace

cudaError_t cudaGetLastError() {
  const cudaError_t error = t_last_error;
  t_last_error = cudaSuccess;
  return error;
}

const char* cudaGetErrorString(cudaError_t error) {
  // The real runtime's texts.
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
  }
  return "unrecognized error code";
}

cudaError_t cudaMemsetAsync(void* device_pointer, int value, size_t count, cudaStream_t) {
  if (device_pointer == nullptr && count > 0) return t_last_error = cudaErrorInvalidValue;
  std::memset(device_pointer, value, count);
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = kEmulatedVersion;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  *version = kEmulatedVersion;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  std::lock_guard<std::mutex> lock(g_launches);
  *count = g_device_count;
  return g_device_count > 0 ? cudaSuccess : (t_last_error = cudaErrorNoDevice);
}

namespace {
template <typename T>
T locked_add(T* address, T value) {
  std::lock_guard<std::mutex> lock(g_atomics);
  const T old = *address;
  *address = old + value;
  return old;
}
}  // namespace

unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return locked_add(address, value);
}
double atomicAdd(double* address, double value) { return locked_add(address, value); }

namespace fu_emu {

void syncthreads(Site site) {
  if (t_block == nullptr)
    throw std::runtime_error(
        "fu_emu: " + where(site) + ": __syncthreads() in kernel " + (t_kernel ? t_kernel : "(none)") +
        ", which build.py found no synchronising primitive in and so runs one thread after another");
  t_block->syncthreads(site);
}

uint64_t shuffle_down(unsigned int mask, uint64_t bits, unsigned int delta, int width, Site site) {
  if (t_block == nullptr)
    throw std::runtime_error(
        "fu_emu: " + where(site) + ": __shfl_down_sync in kernel " + (t_kernel ? t_kernel : "(none)") +
        ", which build.py found no synchronising primitive in and so runs one thread after another");
  return t_block->shuffle_down(t_thread, mask, bits, delta, width, site);
}

void launch(const char* kernel, Mode mode, unsigned int max_threads, const LaunchConfig& config,
            void (*body)(void*), void* context) {
  std::lock_guard<std::mutex> lock(g_launches);
  KernelStats& stats = g_stats[kernel];
  stats.mode = static_cast<int>(mode);
  const cudaError_t error = check_config(config, max_threads);
  if (error != cudaSuccess) {
    ++stats.refused;
    t_last_error = error;
    return;
  }
  ++stats.launches;
  stats.grid = config.grid;
  stats.block = config.block;
  const unsigned long long blocks = static_cast<unsigned long long>(config.grid.x) * config.grid.y * config.grid.z;
  const unsigned long long first = g_first_block < blocks ? g_first_block : blocks;
  const unsigned long long last = g_last_block < blocks ? g_last_block : blocks;
  if (first >= last) return;
  stats.blocks_run += last - first;
  blockDim = config.block;
  gridDim = config.grid;
  t_kernel = kernel;
  if (mode == Mode::Threaded) {
    run_threaded(kernel, config, first, last, body, context);
  } else {
    run_sequential(config, first, last, body, context);
  }
}

}  // namespace fu_emu

// Controls for the tests (ctypes). Kernels are named as in their source.
#define FU_EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
KernelStats stats_of(const char* kernel) {
  std::lock_guard<std::mutex> lock(g_launches);
  const auto found = g_stats.find(kernel);
  return found == g_stats.end() ? KernelStats{} : found->second;
}
}  // namespace

// Forgets every statistic, runs whole grids again and reports one device.
FU_EMU_EXPORT void fu_emu_reset() {
  std::lock_guard<std::mutex> lock(g_launches);
  g_stats.clear();
  g_first_block = 0;
  g_last_block = ~0ull;
  g_device_count = 1;
}

// Launches of the kernel that passed the configuration check (and ran).
FU_EMU_EXPORT unsigned long long fu_emu_launches(const char* kernel) { return stats_of(kernel).launches; }

// Launches of the kernel refused by the configuration check.
FU_EMU_EXPORT unsigned long long fu_emu_refused(const char* kernel) { return stats_of(kernel).refused; }

// Blocks of the kernel run, over all its launches.
FU_EMU_EXPORT unsigned long long fu_emu_blocks_run(const char* kernel) { return stats_of(kernel).blocks_run; }

// How the kernel was last launched: 1 with one OS thread per CUDA thread, 0 one thread after
// another, -1 never.
FU_EMU_EXPORT int fu_emu_mode(const char* kernel) { return stats_of(kernel).mode; }

// dims[0..5] = grid x, y, z and block x, y, z of the kernel's last launch that ran; returns 0
// (dims untouched) when none did.
FU_EMU_EXPORT int fu_emu_last_config(const char* kernel, unsigned int* dims) {
  const KernelStats stats = stats_of(kernel);
  if (stats.launches == 0) return 0;
  const unsigned int values[6] = {stats.grid.x, stats.grid.y, stats.grid.z, stats.block.x, stats.block.y, stats.block.z};
  std::memcpy(dims, values, sizeof values);
  return 1;
}

// From now on, launches run only the blocks whose linear index x + gx * (y + gy * z) lies in
// [first, last); the others are skipped as if they had run.
FU_EMU_EXPORT void fu_emu_set_block_range(unsigned long long first, unsigned long long last) {
  std::lock_guard<std::mutex> lock(g_launches);
  g_first_block = first;
  g_last_block = last;
}

// The devices cudaGetDeviceCount reports (0: it fails with cudaErrorNoDevice).
FU_EMU_EXPORT void fu_emu_set_device_count(int count) {
  std::lock_guard<std::mutex> lock(g_launches);
  g_device_count = count;
}
