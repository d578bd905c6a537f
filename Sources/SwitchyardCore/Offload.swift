import NIOPosix

/// Work that can take more than about 100 µs, moved off the event loop that runs the request (DESIGN property 3):
/// parsing or hashing a multi-megabyte body, rendering one for an upstream, searching a large semantic namespace.
/// Small inputs run in place, since a hop to the thread pool costs a few microseconds of its own.
public enum Offload {
    /// Inputs of at least this many bytes are processed on the thread pool.
    public static let thresholdBytes = 256 << 10

    /// Runs `work` on NIO's shared thread pool when `bytes` reaches `thresholdBytes`, else where the caller is.
    public static func ifLarge<T: Sendable, E: Error>(_ bytes: Int, _ work: @escaping @Sendable () throws(E) -> T) async throws -> T {
        guard bytes >= thresholdBytes else { return try work() }
        return try await run(work)
    }

    /// Runs `work` on NIO's shared thread pool and waits for it.
    public static func run<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive { try work() }
    }

    /// Runs `work` on NIO's shared thread pool and does not wait for it (a semantic-cache insert, an index build).
    public static func detached(_ work: @escaping @Sendable () -> Void) {
        NIOThreadPool.singleton.submit { state in
            if case .active = state { work() }
        }
    }
}

/// A bounded queue of background jobs (shadow checks of semantic hits), run by a service of the gateway's
/// `ServiceGroup` with a cap on how many run at once. Full: the job is dropped, never queued without bound.
public protocol BackgroundWorkQueue: Sendable {
    /// - Returns: Whether the job was queued.
    @discardableResult func submit(_ job: @escaping @Sendable () async -> Void) -> Bool
}
