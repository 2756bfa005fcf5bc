// A host emulation of the little of CUDA that csrc/ uses, so that the kernels run on
// machines without a GPU (tests/backends/test_cuda_emulated.py). Force-included before each
// csrc/*.cu compiled by g++ with -DFASTMIX_EMULATE. Blocks run one after another.
// The threads of a block run as fibers (ucontext) on the calling thread, in turn: each
// runs until it waits at a barrier (__syncthreads, a warp shuffle) or ends, then the
// next one runs. Deterministic, and about 10x cheaper than an OS thread per CUDA thread
// on a 2-core machine, where hundreds of threads met at every barrier through the
// kernel's scheduler. A thread reading what a higher-numbered thread writes without a
// barrier between reads the old value every time. With -DFASTMIX_EMULATE_OS_THREADS the
// threads are std::threads with std::barrier instead (for AddressSanitizer, which does
// not follow ucontext's stack switches). Launch configurations are checked as a GPU
// would check them. This tests indexing, reductions and synchronisation, not speed or
// memory ordering.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>
#ifndef FASTMIX_EMULATE_OS_THREADS
#include <ucontext.h>
#endif

namespace fastmix_emu {

#ifdef FASTMIX_EMULATE_OS_THREADS
using Barrier = std::barrier<>;
#else
// The fibers of one block: a thread waiting at a barrier hands the calling thread back
// to the launch's loop (yield), which resumes the next fiber.
inline thread_local ucontext_t* t_loop = nullptr;  // the launch's loop
inline thread_local ucontext_t* t_self = nullptr;  // the running fiber
inline thread_local uint64_t t_progress = 0;       // phases completed and fibers ended
inline void yield() { swapcontext(t_self, t_loop); }

// std::barrier's arrive_and_wait and arrive_and_drop, for fibers.
class Barrier {
 public:
  explicit Barrier(unsigned expected) : expected_(expected) {}
  void arrive_and_wait() {
    const uint64_t phase = phase_;
    if (++arrived_ == expected_) {
      complete();
      return;
    }
    while (phase_ == phase) yield();
  }
  void arrive_and_drop() {  // this thread arrives and leaves: later phases expect one fewer
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) complete();
  }

 private:
  void complete() {
    arrived_ = 0;
    ++phase_;
    ++t_progress;
  }
  unsigned expected_, arrived_ = 0;
  uint64_t phase_ = 0;
};
#endif

struct Block {
  std::unique_ptr<Barrier> bar;
  std::vector<std::unique_ptr<Barrier>> warp_bars;
  std::vector<double> shfl;
  std::vector<char> shared;
};

inline thread_local uint3 t_threadIdx, t_blockIdx;
inline thread_local dim3 t_blockDim, t_gridDim;
inline thread_local Block* t_block = nullptr;
inline cudaError_t last_error = cudaSuccess;

// The running block; a kernel's own calls only (set for each block, cleared when its launch ends).
inline Block& this_block() {
  if (t_block == nullptr) {
    std::fputs("cuda_emulate: __syncthreads, a shuffle or shared memory used outside a kernel launch\n", stderr);
    std::abort();
  }
  return *t_block;
}

inline void syncthreads() { this_block().bar->arrive_and_wait(); }

template <typename V>
inline V shfl_xor(unsigned mask, V v, int offset) {
  (void)mask;
  const unsigned tid = t_threadIdx.x, warp = tid / 32, lane = tid % 32;
  Block& b = this_block();
  auto& wb = *b.warp_bars[warp];
  b.shfl[tid] = v;
  wb.arrive_and_wait();
  const V r = static_cast<V>(b.shfl[warp * 32 + (lane ^ static_cast<unsigned>(offset))]);
  wb.arrive_and_wait();
  return r;
}

// A vector access at an address a GPU would fault on ("misaligned address"): recorded
// here and reported by the launch, so that the tests see the vector path's preconditions.
// Launches and vector accesses are counted for the tests (fastmix_emu_counters).
inline std::atomic<bool> misaligned{false};
inline std::atomic<uint64_t> vector_accesses{0}, launches{0};
inline void check_aligned(const void* p, size_t n) {
  vector_accesses.fetch_add(1, std::memory_order_relaxed);
  if (reinterpret_cast<uintptr_t>(p) % n != 0) misaligned = true;
}

// Accesses through load_hinted / store_hinted (common.cuh), recorded while `tracing`
// for the traffic test: the launch (counted from 1), the block and thread, the address
// and size, the L2 policy and whether it is a store.
struct Access {
  uint64_t launch, block, thread, address, bytes, policy, store;
};
inline std::atomic<bool> tracing{false};
inline std::atomic<uint64_t> launch_serial{0};
inline std::mutex trace_mutex;
inline std::vector<Access> trace;
inline thread_local uint64_t t_launch = 0;

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(this_block().shared.data());
}

#ifndef FASTMIX_EMULATE_OS_THREADS
// Each of `blocks` blocks as `threads` fibers: begin(n) sets up block n, enter(t) sets up
// thread t each time it is resumed (threadIdx is per OS thread here, shared by the
// fibers), body(t) is its work. A block whose fibers all wait
// and none can go on (a barrier some threads never reach) fails the launch, where a GPU
// would hang.
template <typename Begin, typename Enter, typename Body>
void run_fibers(unsigned threads, uint64_t blocks, Begin begin, Enter enter, Body body) {
  constexpr size_t kStack = 256 * 1024;
  struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack{new char[kStack]};
    bool started = false, done = false;
    std::function<void()> run;  // its own: a suspended fiber is still inside it
  };
  std::vector<Fiber> fibers(threads);
  ucontext_t loop;
  static thread_local Fiber* t_starting;  // the fiber resumed for the first time
  t_loop = &loop;
  struct Leave {  // they point into this frame: none may outlive the launch
    ~Leave() {
      t_loop = t_self = nullptr;
      t_starting = nullptr;
    }
  } leave;
  for (uint64_t n = 0; n < blocks; ++n) {
    begin(n);
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers[t];
      f.started = f.done = false;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &loop;
      makecontext(&f.context, +[] { t_starting->run(); }, 0);
    }
    unsigned alive = threads;
    while (alive > 0) {
      const uint64_t before = t_progress;
      for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        if (f.done) continue;
        enter(t);
        t_self = &f.context;
        if (!f.started) {
          f.started = true;
          f.run = [&body, &f, t] {
            body(t);
            f.done = true;
            ++t_progress;
          };
          t_starting = &f;
        }
        swapcontext(&loop, &f.context);
        alive -= f.done;
      }
      if (alive > 0 && t_progress == before) {  // every live fiber waits at a barrier no one else reaches
        last_error = cudaErrorLaunchFailure;
        return;
      }
    }
  }
}
#endif

template <typename... KArgs>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, KArgs... args) {
  if (block.x == 0 || block.x > 1024 || block.x % 32 != 0 || block.y != 1 || block.z != 1 || grid.x == 0 ||
      grid.x > 0x7fffffffu || grid.y == 0 || grid.y > 65535 || grid.z != 1 || smem > 48 * 1024) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  launches.fetch_add(1);
  const uint64_t serial = launch_serial.fetch_add(1) + 1;
  std::tuple<KArgs...> packed(args...);
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y;
  std::unique_ptr<Block> current;
  auto fresh = [&] {
    current = std::make_unique<Block>();
    current->bar = std::make_unique<Barrier>(block.x);
    for (unsigned w = 0; w < block.x / 32; ++w) current->warp_bars.push_back(std::make_unique<Barrier>(32));
    current->shfl.assign(block.x, 0.0);
    current->shared.assign(smem + 16, 0);
  };
#ifndef FASTMIX_EMULATE_OS_THREADS
  t_blockDim = block;
  t_gridDim = grid;
  t_launch = serial;
  run_fibers(block.x, blocks, [&](uint64_t n) {
    fresh();
    t_blockIdx = uint3{static_cast<unsigned>(n % grid.x), static_cast<unsigned>(n / grid.x), 0};
    t_block = current.get();
  }, [&](unsigned t) { t_threadIdx = uint3{t, 0, 0}; }, [&](unsigned t) {
    std::apply(kernel, packed);
    // an exited thread no longer holds back __syncthreads or its warp
    t_block->warp_bars[t / 32]->arrive_and_drop();
    t_block->bar->arrive_and_drop();
  });
  t_block = nullptr;  // `current` goes with this frame
#else
  // One host thread per CUDA thread, reused block after block.
  std::barrier<> between(block.x);
  std::vector<std::thread> threads;
  threads.reserve(block.x);
  for (unsigned t = 0; t < block.x; ++t) {
    threads.emplace_back([&, t] {
      t_threadIdx = uint3{t, 0, 0};
      t_blockDim = block;
      t_gridDim = grid;
      t_launch = serial;
      for (uint64_t n = 0; n < blocks; ++n) {
        if (t == 0) fresh();
        between.arrive_and_wait();  // the block's state is ready
        t_blockIdx = uint3{static_cast<unsigned>(n % grid.x), static_cast<unsigned>(n / grid.x), 0};
        t_block = current.get();
        std::apply(kernel, packed);
        // an exited thread no longer holds back __syncthreads or its warp
        t_block->warp_bars[t / 32]->arrive_and_drop();
        t_block->bar->arrive_and_drop();
        between.arrive_and_wait();  // every thread is done with the block
      }
    });
  }
  for (auto& th : threads) th.join();
#endif
  if (misaligned.exchange(false)) last_error = cudaErrorMisalignedAddress;
}

inline void record(const void* p, size_t n, int policy, bool store) {
  if (!tracing.load(std::memory_order_relaxed)) return;
  const uint64_t block = t_blockIdx.x + static_cast<uint64_t>(t_blockIdx.y) * t_gridDim.x;
  const std::lock_guard<std::mutex> lock(trace_mutex);
  trace.push_back(Access{t_launch, block, t_threadIdx.x, reinterpret_cast<uintptr_t>(p), n,
                         static_cast<uint64_t>(policy), store});
}

}  // namespace fastmix_emu

#undef __shared__
#undef __launch_bounds__
#define __launch_bounds__(...)
#define __shared__ static
#define threadIdx fastmix_emu::t_threadIdx
#define blockIdx fastmix_emu::t_blockIdx
#define blockDim fastmix_emu::t_blockDim
#define gridDim fastmix_emu::t_gridDim
#define __syncthreads() fastmix_emu::syncthreads()
#define __shfl_xor_sync(mask, v, o) fastmix_emu::shfl_xor(mask, v, o)

// cuda_runtime.h declares these symbol templates for nvcc only.
template <typename T>
cudaError_t cudaGetSymbolAddress(void** p, const T& symbol) {
  return ::cudaGetSymbolAddress(p, static_cast<const void*>(&symbol));
}
template <typename T>
cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const T& symbol, size_t n, size_t off, cudaMemcpyKind kind,
                                      cudaStream_t s) {
  return ::cudaMemcpyFromSymbolAsync(dst, static_cast<const void*>(&symbol), n, off, kind, s);
}
template <typename T>
cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t n, size_t off, cudaMemcpyKind kind,
                                    cudaStream_t s) {
  return ::cudaMemcpyToSymbolAsync(static_cast<const void*>(&symbol), src, n, off, kind, s);
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }
#ifdef FASTMIX_EMULATE_VECTOR_ATOMICS
inline float4 atomicAdd(float4* p, float4 v) {
  return make_float4(atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y), atomicAdd(&p->z, v.z), atomicAdd(&p->w, v.w));
}
#endif
