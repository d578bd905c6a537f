#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where savings are kept: in this process (`SavingsLedger`) or shared by every instance (Redis).
public protocol SavingsStore: Sendable {
    /// Counts one request's saving; never blocks (a shared store writes in the background).
    func record(tenant: String, kind: SavingsLedger.Kind, saved: NanoUSD)
    /// Totals per tenant and kind between `from` and `to` (Unix seconds, inclusive at minute granularity).
    func totals(from: Int64, to: Int64, tenant: String?) async throws -> [String: [SavingsLedger.Kind: SavingsLedger.Total]]
    /// Unix seconds now.
    var now: Int64 { get }
}

/// What the caches saved, per tenant and kind, in one-minute buckets for the last `retention`: the data behind
/// `GET /v1/usage/savings`. In memory (the embedded default); totals since start are also Prometheus counters.
public final class SavingsLedger: SavingsStore {
    /// How a request saved money.
    public enum Kind: String, Sendable, CaseIterable {
        /// Served by the exact cache: the whole answer's list price.
        case exact
        /// Served by the semantic cache: the stored answer's list price.
        case semantic
        /// The provider's prompt cache: cached input tokens at the input price minus what they were billed.
        case promptCache = "prompt_cache"
        /// Sent through the provider's batch API: the price sent alone minus the batch price.
        case batch
    }

    public struct Total: Sendable, Hashable {
        public var requests = 0
        public var saved = NanoUSD.zero

        public init(requests: Int = 0, saved: NanoUSD = .zero) {
            self.requests = requests
            self.saved = saved
        }
    }

    struct Key: Hashable {
        var minute: Int64
        var tenant: String
        var kind: Kind
    }

    private struct State {
        var buckets: [Key: Total] = [:]
        var trimmedAt: Int64 = 0
    }

    private let state = Locked(State())
    private let retentionMinutes: Int64
    /// (minute, tenant, kind) buckets kept at most: tenants are whoever calls (in the embedded default, each API key).
    public let maximumBuckets: Int
    private let clock: @Sendable () -> Int64

    /// - Parameter now: Unix seconds (injectable for tests).
    public init(retention: Duration = .seconds(7 * 86400), maximumBuckets: Int = 200_000,
                now: @escaping @Sendable () -> Int64 = SavingsLedger.unixNow) {
        self.maximumBuckets = max(1, maximumBuckets)
        self.retentionMinutes = max(1, retention.components.seconds / 60)
        self.clock = now
    }

    public static let unixNow: @Sendable () -> Int64 = {
        // Wall-clock seconds without Foundation.
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec)
    }

    public func record(tenant: String, kind: Kind, saved: NanoUSD) {
        let minute = clock() / 60
        let key = Key(minute: minute, tenant: tenant, kind: kind)
        let maximumBuckets = self.maximumBuckets
        state.withLock { state in
            if state.buckets[key] == nil && state.buckets.count >= maximumBuckets {
                // Full: the oldest minute goes first; if every bucket is this minute's, the record is dropped.
                let oldest = state.buckets.keys.lazy.map(\.minute).min() ?? minute
                guard oldest < minute else { return }
                state.buckets = state.buckets.filter { $0.key.minute != oldest }
            }
            state.buckets[key, default: Total()].requests += 1
            state.buckets[key, default: Total()].saved += saved
            // Minutes past the retention go, checked once per new minute.
            if minute != state.trimmedAt {
                state.trimmedAt = minute
                let oldest = minute - retentionMinutes
                state.buckets = state.buckets.filter { $0.key.minute >= oldest }
            }
        }
    }

    /// Totals per tenant and kind between `from` and `to` (Unix seconds, both inclusive at minute granularity);
    /// `tenant` limits them to one tenant.
    public func totals(from: Int64, to: Int64, tenant: String? = nil) -> [String: [Kind: Total]] {
        let first = from / 60, last = to / 60
        return state.withLock { state in
            var result: [String: [Kind: Total]] = [:]
            for (key, total) in state.buckets where key.minute >= first && key.minute <= last && (tenant == nil || key.tenant == tenant) {
                result[key.tenant, default: [:]][key.kind, default: Total()].requests += total.requests
                result[key.tenant, default: [:]][key.kind, default: Total()].saved += total.saved
            }
            return result
        }
    }

    public var now: Int64 { clock() }
}
