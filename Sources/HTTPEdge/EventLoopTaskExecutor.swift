public import NIOCore

/// A task executor that runs its jobs on one event loop.
///
/// The edge runs each request's task with the connection's event loop as its preferred executor. NIO's event loops
/// are also Swift's global executor here (`main.swift`), but they run global jobs as a *serial* executor, so each
/// call into a nonisolated async function (which must run on the generic executor) saw a different executor and
/// re-enqueued the task on the loop: a lock, a queue entry and a later loop tick, several times per request (6% of
/// the gateway's CPU under load in `perf`). Jobs run here as this task executor's, which is what the task prefers,
/// so such calls continue in place.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let loop: any EventLoop

    public init(loop: any EventLoop) {
        self.loop = loop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}
