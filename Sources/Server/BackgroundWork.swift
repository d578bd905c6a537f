import ServiceLifecycle
import SwitchyardCore

/// The gateway's background jobs (shadow checks): a bounded buffer and at most `concurrency` jobs at once, run as
/// a service of the gateway's `ServiceGroup`, so they are bounded, visible and stopped with the gateway instead of
/// living in detached tasks. A job submitted while the buffer is full is dropped and counted.
final class BackgroundWork: BackgroundWorkQueue, Service {
    typealias Job = @Sendable () async -> Void

    private let jobs: AsyncStream<Job>
    private let input: AsyncStream<Job>.Continuation
    let concurrency: Int
    let dropped = Locked(0)

    init(capacity: Int = 256, concurrency: Int = 4) {
        (jobs, input) = AsyncStream.makeStream(of: Job.self, bufferingPolicy: .bufferingOldest(capacity))
        self.concurrency = max(1, concurrency)
    }

    @discardableResult func submit(_ job: @escaping Job) -> Bool {
        if case .enqueued = input.yield(job) { return true }
        dropped.withLock { $0 += 1 }
        return false
    }

    func run() async throws {
        let jobs = self.jobs
        let concurrency = self.concurrency
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                var running = 0
                for await job in jobs {
                    if running >= concurrency {
                        await group.next()
                        running -= 1
                    }
                    group.addTask { await job() }
                    running += 1
                }
            }
        } onGracefulShutdown: { [input] in
            // Jobs already queued still run; no new ones are taken.
            input.finish()
        }
    }
}
