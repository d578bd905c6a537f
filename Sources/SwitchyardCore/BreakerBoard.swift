import Synchronization

/// Where the instances of a gateway tell each other that a deployment's circuit breaker opened, so that one
/// instance's finding (the deployment fails) stops every instance's attempts on it, not only its own. Each
/// instance keeps its breakers (the window, the probes); the board carries the openings. Times are Unix
/// nanoseconds, since one process's monotonic clock means nothing to another.
public protocol BreakerBoard: Sendable {
    /// `deployment`'s breaker opened here: it refuses until `until`.
    func opened(_ deployment: String, until: Int64) async throws
    /// The deployments some instance holds open at `now`, with until when.
    func open(now: Int64) async throws -> [String: Int64]
}

/// The board of the instances of one process (tests; several gateways in one process). Its entries are the
/// configured deployments' (not callers'), and it keeps only the latest opening of each.
public final class InMemoryBreakerBoard: BreakerBoard {
    private let entries = Mutex<[String: Int64]>([:])

    public init() {}

    public func opened(_ deployment: String, until: Int64) async throws {
        entries.withLock { $0[deployment] = max($0[deployment] ?? .min, until) }
    }

    public func open(now: Int64) async throws -> [String: Int64] {
        entries.withLock { entries in
            entries = entries.filter { $0.value > now }
            return entries
        }
    }
}
