import Synchronization

/// A value behind a short, synchronous lock: the one place hot shared state is guarded.
///
/// Hold the lock for nanoseconds: never await, log, resume a continuation or call out while holding it.
public final class Locked<Value: ~Copyable>: Sendable where Value: Sendable {
    private let mutex: Mutex<Value>

    public init(_ value: consuming sending Value) {
        self.mutex = Mutex(value)
    }

    /// Runs `body` with exclusive access to the value.
    public func withLock<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        try mutex.withLock(body)
    }
}
