import Foundation
import Synchronization

/// Splits the products of one small encoding between the calling thread and one helper thread that spins, for
/// the length of the encoding, waiting for the next product.
///
/// `DispatchQueue.concurrentPerform` wakes a sleeping worker for every product. On a VM that wake-up costs
/// 50–100 µs, more than half of a 14-token product, so a single query ran faster on one core than split. Here the
/// helper is woken once per encoding and then picks each product up within a spin.
///
/// A product is two halves. The caller posts the product, runs half 0, then claims half 1 itself if the helper has
/// not claimed it yet (the helper may be descheduled on a busy machine): the caller never waits for a helper that
/// has not started. Claiming is one compare-and-swap, so each half runs exactly once.
///
/// `@unchecked Sendable`: `job` is written by the session's owner before `posted` is released and read by the helper
/// only after acquiring `posted` and winning the claim; the owner clears it only after the claimed half finished.
final class PairWorker: @unchecked Sendable {
    static let shared = PairWorker()

    private var job: ((Int) -> Void)?
    /// Number of the last product posted (only the session's owner writes it).
    private let posted = Atomic<Int>(0)
    /// Number of the last product whose second half was claimed.
    private let claimed = Atomic<Int>(0)
    /// Number of the last product whose second half finished.
    private let finished = Atomic<Int>(0)
    /// A session is open: the helper spins instead of sleeping.
    private let active = Atomic<Bool>(false)
    /// A caller owns the worker (one session at a time; others run on their own thread).
    private let owned = Atomic<Bool>(false)
    private let wake = NSCondition()
    private let started = Atomic<Bool>(false)

    /// Runs `body` with the worker, or with `nil` when another encoding holds it.
    func session<Result>(_ body: (PairWorker?) -> Result) -> Result {
        guard owned.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            return body(nil)
        }
        if !started.load(ordering: .relaxed) {
            started.store(true, ordering: .relaxed)
            let thread = Thread { [self] in helperLoop() }
            thread.name = "switchyard-embed-pair"
            thread.start()
        }
        wake.lock()
        active.store(true, ordering: .releasing)
        wake.signal()
        wake.unlock()
        defer {
            active.store(false, ordering: .releasing)
            owned.store(false, ordering: .releasing)
        }
        return body(self)
    }

    /// Runs `body(0)` here and `body(1)` on the helper (or here, if the helper has not picked it up by then).
    func run(_ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            job = body
            let number = posted.load(ordering: .relaxed) + 1
            posted.store(number, ordering: .releasing)
            body(0)
            if claimed.compareExchange(expected: number - 1, desired: number, ordering: .acquiringAndReleasing).exchanged {
                body(1)
                finished.store(number, ordering: .releasing)
            } else {
                // The helper is running its half: wait, yielding the core now and then in case the helper was
                // preempted and needs it.
                var spins = 0
                while finished.load(ordering: .acquiring) != number {
                    spins += 1
                    if spins % 4096 == 0 { sched_yield() }
                }
            }
            job = nil
        }
    }

    private func helperLoop() {
        while true {
            wake.lock()
            while !active.load(ordering: .acquiring) { wake.wait() }
            wake.unlock()
            var seen = posted.load(ordering: .acquiring)
            while active.load(ordering: .acquiring) {
                let number = posted.load(ordering: .acquiring)
                guard number != seen else { continue }
                seen = number
                if claimed.compareExchange(expected: number - 1, desired: number, ordering: .acquiringAndReleasing).exchanged {
                    job?(1)
                    finished.store(number, ordering: .releasing)
                }
            }
        }
    }
}
