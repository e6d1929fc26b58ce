// llms::parallel_for: our own split of a kernel's output rows over torch's thread count, for decode-sized work.
//
// Why not at::parallel_for (OpenMP): a decode step runs about 120 short products, and OpenMP's end-of-region
// barrier makes the caller wait for every thread. On this kind of VM a sleeping thread takes ~50-100 us to wake
// (OMP_WAIT_POLICY=PASSIVE: a step 2x slower than spinning), while spinning threads stall a step whenever
// another process holds a core (GOMP_SPINCOUNT=10000 next to one busy process: 4x slower than not spinning).
//
// Here the work is cut into chunks that threads *claim* from a counter. The caller claims chunks too and waits
// only for chunks a helper has claimed, never for a helper to arrive: a helper that is asleep or descheduled
// simply gets no chunk, so the worst case is the caller doing everything (one thread's speed). Helpers spin
// for a short while after a job (the next product of a step follows within microseconds), then sleep.
// Helpers beyond torch's current thread count - 1 sit jobs out; an exception in a chunk reaches the caller; a
// parallel_for inside a chunk, or from a second thread while one runs, runs serially; a forked child starts a
// pool of its own.
#include <ATen/Parallel.h>
#include <atomic>
#include <exception>
#include <pthread.h>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMS_PAUSE() _mm_pause()
#else
#define LLMS_PAUSE() std::this_thread::yield()
#endif
#include "quant_kernels.h"

namespace llms {
namespace {

constexpr auto kSpin = std::chrono::microseconds(300);  // how long an idle helper polls before it sleeps

// spin-wait step: a pause, and every 1024th time a yield (on a busy machine the thread we wait for needs a core)
inline void wait_a_little(int& spins) {
    if (++spins % 1024 == 0) std::this_thread::yield();
    else LLMS_PAUSE();
}

struct Pool {
    // epoch: even = a job is published (its fields are valid), odd = the caller is writing the next one
    alignas(64) std::atomic<uint64_t> epoch{0};
    alignas(64) std::atomic<int64_t> next{0};  // next chunk to claim
    alignas(64) std::atomic<int64_t> done{0};  // chunks finished
    alignas(64) std::atomic<int> inside{0};    // helpers that entered the current job and have not left it
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0, chunk = 1, chunks = 0;
    int wanted = 0;               // helpers 0..wanted-1 take part in the current job (torch's thread count - 1)
    std::exception_ptr error;     // the first exception a chunk threw (guarded by mu), rethrown to the caller
    std::mutex mu, call;          // mu: sleeping helpers, error; call: one caller at a time (others run serially)
    std::condition_variable cv;
    int sleeping = 0;
    std::vector<std::thread> helpers;

    // claim and run chunks of the current job until none is left
    void work() {
        for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
            try {
                (*fn)(i * chunk, std::min(n, (i + 1) * chunk));
            } catch (...) {
                std::lock_guard<std::mutex> lock(mu);
                if (!error) error = std::current_exception();
            }
            done.fetch_add(1);
        }
    }

    void helper(int index) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t e;
            auto t0 = std::chrono::steady_clock::now();
            for (int spins = 0; (e = epoch.load()) == seen || (e & 1); ++spins) {
                if ((spins & 63) == 0 && std::chrono::steady_clock::now() - t0 > kSpin) {
                    std::unique_lock<std::mutex> lock(mu);
                    ++sleeping;
                    cv.wait(lock, [&] { uint64_t v = epoch.load(); return v != seen && !(v & 1); });
                    --sleeping;
                    t0 = std::chrono::steady_clock::now();
                }
                LLMS_PAUSE();
            }
            seen = e;
            inside.fetch_add(1);  // seq_cst with the caller's epoch store: either it waits for us, or we see its
            if (epoch.load() == e && index < wanted) work();  // epoch moved on and skip
            inside.fetch_sub(1);
        }
    }

    void run(int64_t n_, int64_t chunk_, const std::function<void(int64_t, int64_t)>& f, int threads) {
        while ((int)helpers.size() < threads - 1) {
            const int index = (int)helpers.size();
            helpers.emplace_back([this, index] { helper(index); });
            helpers.back().detach();  // lives as long as the process
        }
        epoch.fetch_add(1);  // odd: closed
        for (int spins = 0; inside.load() != 0;) wait_a_little(spins);  // stragglers of the last job leave
        fn = &f, n = n_, chunk = chunk_, chunks = (n_ + chunk_ - 1) / chunk_, wanted = threads - 1;
        next.store(0), done.store(0);
        epoch.fetch_add(1);  // even: published
        {
            std::lock_guard<std::mutex> lock(mu);
            if (sleeping) cv.notify_all();
        }
        work();
        for (int spins = 0; done.load() < chunks;) wait_a_little(spins);  // only chunks a helper is running now
        std::exception_ptr e;
        {
            std::lock_guard<std::mutex> lock(mu);
            std::swap(e, error);
        }
        if (e) std::rethrow_exception(e);
    }
};

std::atomic<Pool*> the_pool{nullptr};
thread_local bool in_job = false;  // this thread is running a chunk: a nested parallel_for runs serially

// A forked child has the pool's memory but none of its threads (and maybe a lock a helper held): it starts afresh.
void forget_pool_in_child() { the_pool = nullptr; }  // the old one is leaked, as it may hold locked mutexes

Pool& pool() {
    static const bool registered = (pthread_atfork(nullptr, nullptr, forget_pool_in_child), true);
    (void)registered;
    Pool* p = the_pool.load();
    if (p == nullptr) {  // never destroyed: detached helpers may still poll it at exit
        Pool* fresh = new Pool();
        p = the_pool.compare_exchange_strong(p, fresh) ? fresh : (delete fresh, p);  // two first callers: one wins
    }
    return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    const int threads = at::get_num_threads();
    grain = std::max<int64_t>(grain, 1);
    if (threads <= 1 || n <= grain || in_job) return fn(0, n);
    Pool& p = pool();
    std::unique_lock<std::mutex> lock(p.call, std::try_to_lock);
    if (!lock.owns_lock()) return fn(0, n);  // another caller (a second Python thread) has the pool
    // several chunks per thread, so a late or preempted helper leaves little to wait for
    const int64_t chunk = std::max<int64_t>(grain, (n + 4 * threads - 1) / (4 * threads));
    struct Flag {
        Flag() { in_job = true; }
        ~Flag() { in_job = false; }
    } flag;
    p.run(n, chunk, fn, threads);
}

}  // namespace llms
