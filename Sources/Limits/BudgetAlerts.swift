public import SwitchyardModels
public import SwitchyardCore
import Synchronization

/// A budget passed one of its alert thresholds in its current period.
public struct BudgetAlert: Sendable {
    public var limit: String
    public var measure: LimitDefinition.Measure
    public var window: LimitDefinition.Window
    /// The threshold crossed, in percent of `amount`.
    public var threshold: Int
    /// What the counter had used, this request's reservation included (units of the measure; nano-USD for spend).
    public var used: Int64
    public var amount: Int64
    /// The period's start and end, Unix seconds.
    public var periodStart: Int64
    public var periodEnd: Int64
    /// Whose counter: each dimension of the counter's scope (the limit's, with the tenant of a user or key scope) and
    /// its value.
    public var scope: [(String, String)]
    /// Unix seconds.
    public var time: Int64

    /// What makes the alert one of a kind: counter, period and threshold.
    public var key: String {
        "\(limit)|" + scope.map { "\($0.0)=\(CounterKey.escape($0.1))" }.joined(separator: "|") + "|\(periodStart)|\(threshold)"
    }

    public var json: JSONValue {
        var scopeObject: [String: JSONValue] = [:]
        for (dimension, value) in scope { scopeObject[dimension] = .string(value) }
        var object: [String: JSONValue] = [
            "type": "budget.threshold", "limit": .string(limit), "measure": .string(measure.rawValue), "window": .string(window.rawValue),
            "threshold_percent": .int(Int64(threshold)), "used": .int(used), "amount": .int(amount),
            "period_start": .int(periodStart), "period_end": .int(periodEnd), "scope": .object(scopeObject), "time": .int(time),
        ]
        if measure == .spend {
            object["used_usd"] = .string(NanoUSD(used).usdString)
            object["amount_usd"] = .string(NanoUSD(amount).usdString)
        }
        return .object(object)
    }
}

/// Decides once, across every instance sharing it, that an alert is sent: the first `claim` of a key wins.
public protocol AlertLatch: Sendable {
    /// Whether this caller is the first to claim `key` (kept `ttlSeconds`).
    func claim(_ key: String, ttlSeconds: Int64) async throws -> Bool
}

/// This process's latch: keys and when they expire, at most `maximumKeys` (the earliest to expire go first).
public final class InMemoryAlertLatch: AlertLatch {
    private let keys = Mutex<[String: Int64]>([:])
    let maximumKeys: Int
    let clock: @Sendable () -> Int64

    public init(maximumKeys: Int = 100_000, now: @escaping @Sendable () -> Int64 = unixSeconds) {
        self.maximumKeys = max(maximumKeys, 1)
        clock = now
    }

    public func claim(_ key: String, ttlSeconds: Int64) -> Bool {
        let now = clock()
        let maximumKeys = self.maximumKeys
        return keys.withLock { keys in
            if let expiry = keys[key], expiry > now { return false }
            if keys.count >= maximumKeys {
                keys = keys.filter { $0.value > now }
                while keys.count >= maximumKeys, let earliest = keys.min(by: { $0.value < $1.value }) { keys[earliest.key] = nil }
            }
            keys[key] = now + max(ttlSeconds, 1)
            return true
        }
    }
}

/// Watches the budgets with alert thresholds: after each reservation, a counter whose use reached a threshold it had
/// not reached in this period sends one alert (the highest crossed), claimed through the latch so that one instance
/// sends it. Off the request path: the claim and the delivery run in a task.
public final class BudgetAlerter: Sendable {
    let latch: any AlertLatch
    let deliver: @Sendable (BudgetAlert) async -> Void
    /// Alerts this process already saw claimed or sent: checked before the latch, so that each request past a threshold
    /// does not ask the shared store again. Bounded (cleared when full: the latch still decides).
    private let seen = Mutex<Set<String>>([])
    static let maximumSeen = 50_000
    /// Claims and deliveries under way at most; past it an alert waits for the next request past its threshold.
    private let inFlight = Atomic<Int>(0)
    static let maximumInFlight = 256

    public init(latch: any AlertLatch, deliver: @escaping @Sendable (BudgetAlert) async -> Void) {
        self.latch = latch
        self.deliver = deliver
    }

    /// After an admitted reservation: `used` per demand is the counter's use with this request's reservation.
    /// - Parameter now: Unix nanoseconds.
    public func observe(_ reservation: Reservation, definitions: [LimitDefinition], now: Int64) {
        for index in reservation.demands.indices where index < reservation.grants.count {
            let definition = definitions[reservation.demands[index].source]
            guard !definition.alerts.isEmpty else { continue }
            let used = definition.amount - reservation.grants[index].remaining
            consider(definition, key: reservation.demands[index].key, used: used, now: now)
        }
    }

    /// A refusal by a budget: it is spent (its 100% alert, when it has one).
    public func refused(_ demand: LimitDemand, definition: LimitDefinition, remaining: Int64, now: Int64) {
        guard definition.alerts.last == 100 else { return }
        consider(definition, key: demand.key, used: max(definition.amount - remaining, definition.amount), now: now)
    }

    func consider(_ definition: LimitDefinition, key: CounterKey, used: Int64, now: Int64) {
        guard let window = definition.window, definition.amount > 0 else { return }
        // The highest threshold reached: `used / amount ≥ percent / 100`, in integers without overflow.
        let reached = definition.alerts.last { percent in
            Int128(used) * 100 >= Int128(definition.amount) * Int128(percent)
        }
        guard let threshold = reached else { return }
        let calendar: CalendarPeriod = window == .month ? .month : .day
        let period = calendar.period(containing: now)
        let alert = BudgetAlert(limit: definition.name, measure: definition.measure, window: window, threshold: threshold,
                                used: used, amount: definition.amount, periodStart: period.start / 1_000_000_000,
                                periodEnd: period.end / 1_000_000_000,
                                scope: LimitDefinition.Dimension.allCases.filter { key.dimensions & CounterKey.bit($0) != 0 }
                                    .map { ($0.rawValue, key.value($0)) },
                                time: now / 1_000_000_000)
        let id = alert.key
        let fresh = seen.withLock { seen in
            if seen.contains(id) { return false }
            if seen.count >= Self.maximumSeen { seen.removeAll(keepingCapacity: true) }
            seen.insert(id)
            return true
        }
        guard fresh else { return }
        guard inFlight.add(1, ordering: .relaxed).newValue <= Self.maximumInFlight else {
            inFlight.subtract(1, ordering: .relaxed)
            _ = seen.withLock { $0.remove(id) }
            return
        }
        // The key lives past the period's end, so a late request of the period is not alerted again.
        let ttl = max((period.end - now) / 1_000_000_000, 0) + 86400
        let latch = self.latch, deliver = self.deliver
        Task {
            defer { self.inFlight.subtract(1, ordering: .relaxed) }
            do {
                if try await latch.claim(id, ttlSeconds: ttl) { await deliver(alert) }
            } catch {
                // The shared store failed: forget it here, so that a later request tries again.
                _ = self.seen.withLock { $0.remove(id) }
            }
        }
    }
}
