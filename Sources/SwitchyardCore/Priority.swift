/// How urgent a request is: P0 real-time (a user waits), P1 near-real-time (webhooks, notifications), P2 batch.
/// From `x-switchyard-priority`, the key's configuration or the route; each has its own deadline in the queue.
public enum Priority: Int, Sendable, Hashable, CaseIterable, Comparable {
    case p0 = 0, p1, p2

    public static func < (lhs: Priority, rhs: Priority) -> Bool { lhs.rawValue < rhs.rawValue }

    public var name: String {
        switch self {
        case .p0: "p0"
        case .p1: "p1"
        case .p2: "p2"
        }
    }

    public init?(name: String) {
        switch name.lowercased() {
        case "p0": self = .p0
        case "p1": self = .p1
        case "p2": self = .p2
        default: return nil
        }
    }
}

/// How a streaming client learns that its request waits in a deployment's queue: the admission side says so (with a
/// way to read its position), the edge sends SSE comments while it waits. Created by the edge for streaming
/// requests only; the pipeline's task says when it is done.
public final class QueueWatch: Sendable {
    /// Where a waiting request stands.
    public struct Report: Sendable, Hashable {
        /// Requests that will be granted before it.
        public var position: Int
        /// When it should be granted at the budget's rate, if known.
        public var estimatedWait: Duration?

        public init(position: Int, estimatedWait: Duration?) {
            self.position = position
            self.estimatedWait = estimatedWait
        }
    }

    private struct State {
        var source: (@Sendable () -> Report?)?
        var done = false
        var waiter: CheckedContinuation<Bool, Never>?
    }

    private let state = Locked(State())

    public init() {}

    /// The request waits; `source` tells where it stands (nil once it left the queue).
    public func waiting(_ source: @escaping @Sendable () -> Report?) {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.source = source
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)
    }

    /// The pipeline returned or threw.
    public func finished() {
        let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: false)
    }

    public var isDone: Bool { state.withLock { $0.done } }

    /// Where the request stands now; nil when it does not wait (any more).
    public func report() -> Report? { state.withLock { $0.source }?() }

    /// Returns true as soon as the request waits in a queue, false when the pipeline finished first.
    public func queuedOrFinished() async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let now = state.withLock { state -> Bool? in
                if state.done { return false }
                if state.source != nil { return true }
                state.waiter = continuation
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}
