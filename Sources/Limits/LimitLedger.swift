import Foundation
import SwitchyardCore
import Synchronization

/// What one limit counts against, for one scope value (a user, a tenant's model, …): its algorithm and bound.
public enum LimitRule: Sendable, Hashable {
    /// A smooth rate: `limit` units per `period` nanoseconds (GCRA).
    case rate(limit: Int64, period: Int64)
    /// An exact quota per UTC day or month.
    case quota(limit: Int64, calendar: CalendarPeriod)
    /// At most `limit` in flight; a permit expires `ttl` nanoseconds after it was taken or renewed.
    case concurrent(limit: Int, ttl: Int64)
}

/// Which counter a demand counts against: a limit's name and the values of its scope. Compared and hashed field by
/// field, so a request builds no string for it; `text` writes it out (`name|dimension=value|…`, values escaped so no
/// two scopes share a name) for the stores that name their counters.
public struct CounterKey: Sendable, Hashable {
    /// The limit's escaped name, or a whole counter's name given as text (`init(_:)`).
    public let name: String
    /// Which dimensions are in the scope: bit i for `LimitDefinition.Dimension.allCases[i]`. Part of the identity,
    /// so two scopes with the same values never meet.
    let dimensions: UInt8
    /// Each dimension's value when it is in the scope (as the caller has it, unescaped), empty otherwise.
    let key: String, tenant: String, user: String, tier: String, feature: String, model: String

    /// A counter named by its text alone, living in `shard` (empty: alone).
    public init(_ text: String, shard: String = "") {
        // No dimension is set: `tenant` holds the shard as given.
        self.init(name: text, dimensions: 0, tenant: shard)
    }

    init(name: String, dimensions: UInt8, key: String = "", tenant: String = "", user: String = "", tier: String = "",
         feature: String = "", model: String = "") {
        self.name = name
        self.dimensions = dimensions
        self.key = key
        self.tenant = tenant
        self.user = user
        self.tier = tier
        self.feature = feature
        self.model = model
    }

    /// The name, the dimensions and the values in the scope: the others are empty (equal keys hash alike).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(dimensions)
        if dimensions == 0 {
            hasher.combine(tenant)
            return
        }
        if dimensions & 1 != 0 { hasher.combine(key) }
        if dimensions & 2 != 0 { hasher.combine(tenant) }
        if dimensions & 4 != 0 { hasher.combine(user) }
        if dimensions & 8 != 0 { hasher.combine(tier) }
        if dimensions & 16 != 0 { hasher.combine(feature) }
        if dimensions & 32 != 0 { hasher.combine(model) }
    }

    static func bit(_ dimension: LimitDefinition.Dimension) -> UInt8 {
        switch dimension {
        case .key: 1
        case .tenant: 2
        case .user: 4
        case .tier: 8
        case .feature: 16
        case .model: 32
        }
    }

    func value(_ dimension: LimitDefinition.Dimension) -> String {
        switch dimension {
        case .key: key
        case .tenant: tenant
        case .user: user
        case .tier: tier
        case .feature: feature
        case .model: model
        }
    }

    /// `name|dimension=value|…`, the dimensions in their declared order.
    public var text: String {
        var text = name
        for dimension in LimitDefinition.Dimension.allCases where dimensions & Self.bit(dimension) != 0 {
            text += "|\(dimension.rawValue)=" + Self.escape(value(dimension))
        }
        return text
    }

    /// Which counters live together: a scope with the tenant in it is that tenant's (`tenant=<tenant>`); empty: the
    /// counter alone.
    public var tenantShard: String {
        if dimensions == 0 { return tenant }
        return dimensions & Self.bit(.tenant) != 0 ? "tenant=" + Self.escape(tenant) : ""
    }

    /// `%`, `|` and `=` written as `%25`, `%7C`, `%3D` (the separators of `text`).
    public static func escape(_ text: String) -> String {
        // Almost every value has none of the three: returned as it is, without building a copy (scanned as raw
        // bytes where the string has them contiguous, as native strings do).
        func special(_ byte: UInt8) -> Bool { byte == UInt8(ascii: "%") || byte == UInt8(ascii: "|") || byte == UInt8(ascii: "=") }
        let found = text.utf8.withContiguousStorageIfAvailable { $0.contains(where: special) } ?? text.utf8.contains(where: special)
        guard found else { return text }
        var out = ""
        for character in text {
            switch character {
            case "%": out += "%25"
            case "|": out += "%7C"
            case "=": out += "%3D"
            default: out.append(character)
            }
        }
        return out
    }
}

/// One limit a request must pass: which counter (its limit's name and scope values, e.g. "free-rpm" / user alice),
/// its rule, and the units this request reserves (1 for requests and permits; the token or nano-USD estimate
/// otherwise).
public struct LimitDemand: Sendable, Hashable {
    public var key: CounterKey
    public var rule: LimitRule
    public var units: Int64
    /// The index of the definition it comes from, in its planner's `definitions` (0 when made by hand).
    public var source: Int

    public init(counter: String, rule: LimitRule, units: Int64, shard: String = "") {
        self.init(key: CounterKey(counter, shard: shard), rule: rule, units: units)
    }

    /// Large (a key of several strings): read it in place (`demands[i].key`), not as a copy, on hot paths.
    public init(key: CounterKey, rule: LimitRule, units: Int64, source: Int = 0) {
        self.key = key
        self.rule = rule
        self.units = max(units, 0)
        self.source = source
    }

    /// The counter's name written out (what a store that names counters keys it by).
    public var counter: String { key.text }

    /// Which counters live together (one Redis Cluster slot: a request's counters of one tenant are reserved in one
    /// script); empty: the counter alone.
    public var shard: String { key.tenantShard }
}

/// The state of one counter, whichever its rule.
enum CounterState: Sendable, Hashable {
    case rate(GCRA)
    case quota(CalendarQuota)
    case concurrent(Leases)

    init(_ rule: LimitRule) {
        switch rule {
        case .rate(let limit, let period): self = .rate(GCRA(limit: limit, period: period))
        case .quota(let limit, let calendar): self = .quota(CalendarQuota(limit: limit, calendar: calendar))
        case .concurrent(let limit, _): self = .concurrent(Leases(limit: limit))
        }
    }

    /// Runs `body` on the permits in place: the payload is moved out before it is changed, so a dictionary's
    /// leases are not copied whole on every request (through `Dictionary`'s in-place subscript, the only reference).
    mutating func withLeases(_ body: (inout Leases) -> Void) {
        guard case .concurrent(var leases) = self else { return }
        self = .rate(GCRA(limit: 1, period: 1))
        body(&leases)
        self = .concurrent(leases)
    }

    /// A settlement: `delta` more or fewer units than reserved (a quota only in the period it was reserved in), or
    /// the lease's permit back.
    mutating func settle(delta: Int64, period: Int64, lease: UInt64, now: Int64) {
        switch self {
        case .rate(var gcra):
            gcra.adjust(by: delta, now: now)
            self = .rate(gcra)
        case .quota(var quota):
            quota.adjust(by: delta, reservedIn: period, now: now)
            self = .quota(quota)
        case .concurrent:
            withLeases { $0.release(lease) }
        }
    }

    /// Whether it holds nothing a fresh state would not (so dropping it loses nothing).
    func isIdle(now: Int64) -> Bool {
        switch self {
        case .rate(let gcra): gcra.tat <= now
        case .quota(let quota): quota.remaining(now: now) == quota.limit
        case .concurrent(let leases): leases.available(now: now) == leases.limit
        }
    }
}

/// The outcome of reserving a request's demands, all or nothing.
public enum LimitDecision: Sendable, Hashable {
    /// Every limit admitted it. Per demand, in order: what is left and when all of it is free again (ns).
    case admitted(Reservation)
    /// A limit refused (the first, in order); nothing was reserved. `retryIn`: when the same request would pass that
    /// limit (ns; nil: never, it asks for more than the limit allows); the honest `retry-after`.
    case refused(index: Int, retryIn: Int64?, remaining: Int64, resetIn: Int64)
}

/// Where the counters live: this process (`LimitLedger`), or Redis, shared by every instance. Each reservation
/// is settled exactly once, on every path (the caller's duty; the permits it holds expire by themselves otherwise).
public protocol LimitStore: Sendable {
    /// Reserves every demand, or none. `lease` identifies this request's concurrency permits.
    func reserve(_ demands: [LimitDemand], lease: UInt64, now: Int64) async throws -> LimitDecision
    /// The real units per demand (nil: as reserved); gives back the permits.
    func settle(_ reservation: Reservation, actual: [Int64?], now: Int64) async throws
    /// Units each demand's counter has left now (its whole limit when never used), reserving nothing.
    func remaining(_ demands: [LimitDemand], now: Int64) async throws -> [Int64]
    /// Extends the reservation's concurrency permits by their lease time from `now` (a long stream keeps its
    /// permits; a crashed instance stops renewing, and its permits expire).
    func renew(_ reservation: Reservation, now: Int64) async throws
    /// Settles without making the caller wait for the store (and without failing it: a settlement that fails is
    /// lost, and the reservation stands as made).
    func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64)
}

extension LimitStore {
    public func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        Task { try? await settle(reservation, actual: actual, now: now) }
    }
}

/// Unix nanoseconds now: limits shared by instances count in wall-clock time.
public func wallClockNanoseconds() -> Int64 {
    Int64((Date().timeIntervalSince1970 * 1e9).rounded())
}

extension LimitRule {
    public var isConcurrent: Bool {
        if case .concurrent = self { true } else { false }
    }

    /// The whole allowance: what an unused counter has left.
    public var capacity: Int64 {
        switch self {
        case .rate(let limit, _): max(limit, 1)
        case .quota(let limit, _): max(limit, 0)
        case .concurrent(let limit, _): Int64(max(limit, 0))
        }
    }
}

/// What one demand of a reservation was granted.
public struct Grant: Sendable, Hashable {
    /// Units left after this reservation.
    public var remaining: Int64
    /// Nanoseconds until the counter is wholly free.
    public var resetIn: Int64
    /// The quota period it was counted in (nil for other rules).
    public var period: Int64?

    public init(remaining: Int64, resetIn: Int64, period: Int64?) {
        self.remaining = remaining
        self.resetIn = resetIn
        self.period = period
    }
}

/// What was reserved, to settle or release later: the demands, what each was granted, the lease id.
public struct Reservation: Sendable, Hashable {
    public let demands: [LimitDemand]
    public let lease: UInt64
    /// Per demand, in order.
    public let grants: [Grant]
    /// Per demand, where the store keeps its counter (the Redis key), when the store names them: the settlement and
    /// renewals reuse them instead of deriving them again. Empty for the in-memory ledger.
    public let storeKeys: [String]

    public init(demands: [LimitDemand], lease: UInt64, grants: [Grant], storeKeys: [String] = []) {
        self.demands = demands
        self.lease = lease
        self.grants = grants
        self.storeKeys = storeKeys
    }

    public init(demands: [LimitDemand], lease: UInt64, periods: [Int64?], remaining: [Int64], resetIn: [Int64],
                storeKeys: [String] = []) {
        let grants = demands.indices.map { index in
            Grant(remaining: remaining.indices.contains(index) ? remaining[index] : 0,
                  resetIn: resetIn.indices.contains(index) ? resetIn[index] : 0,
                  period: periods.indices.contains(index) ? periods[index] : nil)
        }
        self.init(demands: demands, lease: lease, grants: grants, storeKeys: storeKeys)
    }

    /// Per demand: the quota period it was counted in (nil for other rules).
    public var periods: [Int64?] { grants.map(\.period) }
    /// Per demand: units left after this reservation.
    public var remaining: [Int64] { grants.map(\.remaining) }
    /// Per demand: nanoseconds until its counter is wholly free.
    public var resetIn: [Int64] { grants.map(\.resetIn) }
}

/// Every counter in this process, under one short lock: a request's limits are checked and reserved together, so a
/// refusal by one reserves nothing in the others and no two requests can both take the last unit. The in-memory
/// backend (the embedded default); the Redis one does the same in one script.
///
/// Bounded at `maximumCounters`: past it, counters that hold nothing a fresh one would not are dropped first (losslessly),
/// then the least recently used, whose users then get one window's allowance again.
///
/// Counters are values in the dictionary, worked on in place under the lock: as references (kept by a reservation
/// for its settlement) every request would retain and release objects that both event loops' threads share.
public final class LimitLedger: LimitStore {
    /// A counter and when it was last used (its place in the eviction order), in one entry: one hash per lookup.
    private struct Entry: Sendable {
        var counter: CounterState
        var touched: UInt64
    }

    private struct State: Sendable {
        var counters: [CounterKey: Entry] = [:]
        var clock: UInt64 = 0
    }

    private let state = Mutex(State())
    public let maximumCounters: Int

    public init(maximumCounters: Int = 200_000) {
        self.maximumCounters = max(maximumCounters, 1)
    }

    public var count: Int { state.withLock { $0.counters.count } }

    /// Reserves every demand, or none. `lease` identifies this request's concurrency permits.
    public func reserve(_ demands: [LimitDemand], lease: UInt64, now: Int64) -> LimitDecision {
        state.withLock { state in
            var grants: [Grant] = []
            grants.reserveCapacity(demands.count)
            // Checked first, changed only once every demand passed. Rates and quotas are small values, worked on as
            // copies; permits are checked without being taken, and taken in place below (no copy of them is kept
            // here: a second reference would make the change copy every lease). Read through what this reservation
            // already took: two demands on one counter both count. Each stored counter's position is kept, to write
            // it back without hashing its key again.
            var pending: [(slot: Dictionary<CounterKey, Entry>.Index?, counter: CounterState?)] = []
            pending.reserveCapacity(demands.count)
            // By index, each demand read in place: a copy of one would retain every string of its key.
            for index in demands.indices {
                let slot = state.counters.index(forKey: demands[index].key)
                // Two demands on one stored counter have one position; on a new one, one key.
                let earlier = index == 0 ? nil : (0..<index).last {
                    pending[$0].slot == slot && (slot != nil || demands[$0].key == demands[index].key)
                }.flatMap { pending[$0].counter }
                let rule = demands[index].rule, units = demands[index].units
                let counter = (earlier ?? slot.map { state.counters.values[$0].counter }).flatMap { Self.matching($0, rule) }
                    ?? CounterState(rule)
                switch counter {
                case .rate(var gcra):
                    switch gcra.reserve(units, now: now) {
                    case .admitted(let left, let reset): grants.append(Grant(remaining: left, resetIn: reset, period: nil))
                    case .refused(let retry, let left, let reset): return .refused(index: index, retryIn: retry, remaining: left, resetIn: reset)
                    }
                    pending.append((slot, .rate(gcra)))
                case .quota(var quota):
                    switch quota.reserve(units, now: now) {
                    case .admitted(let left, let reset): grants.append(Grant(remaining: left, resetIn: reset, period: quota.periodIndex))
                    case .refused(let retry, let left, let reset): return .refused(index: index, retryIn: retry, remaining: left, resetIn: reset)
                    }
                    pending.append((slot, .quota(quota)))
                case .concurrent(let leases):
                    guard leases.canAcquire(lease, now: now) else {
                        return .refused(index: index, retryIn: leases.earliestExpiry(now: now), remaining: 0,
                                        resetIn: leases.earliestExpiry(now: now) ?? 0)
                    }
                    grants.append(Grant(remaining: Int64(leases.available(now: now) - (leases.held[lease] == nil ? 1 : 0)), resetIn: 0, period: nil))
                    pending.append((slot, nil))
                }
            }
            state.clock &+= 1
            let clock = state.clock
            // Stored counters first, in place (their positions stay valid while nothing is added), then the new ones
            // (an insertion may move every entry, or evict).
            var added = false
            for offset in demands.indices {
                guard let slot = pending[offset].slot else {
                    added = true
                    continue
                }
                Self.take(pending[offset].counter, demands[offset].rule, in: &state.counters.values[slot], lease: lease, now: now, clock: clock)
            }
            if added {
                for offset in demands.indices where pending[offset].slot == nil {
                    let key = demands[offset].key, rule = demands[offset].rule
                    // A second demand on a new counter finds the entry the first made.
                    if state.counters[key] == nil {
                        Self.store(&state, key, Entry(counter: CounterState(rule), touched: clock), now: now, limit: maximumCounters)
                    }
                    if let index = state.counters.index(forKey: key) {
                        Self.take(pending[offset].counter, rule, in: &state.counters.values[index], lease: lease, now: now, clock: clock)
                    }
                }
            }
            return .admitted(Reservation(demands: demands, lease: lease, grants: grants))
        }
    }

    /// Writes a checked rate or quota into its entry, or takes the permit there (in place: the leases are not copied).
    private static func take(_ pending: CounterState?, _ rule: LimitRule, in entry: inout Entry, lease: UInt64, now: Int64, clock: UInt64) {
        entry.touched = clock
        if let pending {
            entry.counter = pending
        } else if case .concurrent(_, let ttl) = rule {
            if matching(entry.counter, rule) == nil { entry.counter = CounterState(rule) }
            entry.counter.withLeases { _ = $0.acquire(lease, now: now, ttl: ttl) }
        }
    }

    /// Settles a reservation with the real units per demand (`actual[i]` for `demands[i]`; a missing one keeps what
    /// was reserved) and releases its permits. Call exactly once per admitted reservation, on every path.
    public func settle(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        state.withLock { state in
            for index in reservation.demands.indices {
                let units = reservation.demands[index].units
                let used = index < actual.count ? actual[index].map { max($0, 0) } ?? units : units
                let delta = used > units ? used - units : -(units - used)
                // A rate or quota that used what it reserved (a request counter, say) has nothing to settle.
                if delta == 0, !reservation.demands[index].rule.isConcurrent { continue }
                let period = index < reservation.grants.count ? reservation.grants[index].period ?? .min : .min
                // In place, through the dictionary's own storage: one lookup.
                state.counters[reservation.demands[index].key]?.counter.settle(delta: delta, period: period, lease: reservation.lease, now: now)
            }
        }
    }

    /// In memory a settlement is a short lock: done at once, without a task.
    public func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        settle(reservation, actual: actual, now: now)
    }

    /// Gives a reservation back whole (the request never reached the model): `settle` with zero units.
    public func release(_ reservation: Reservation, now: Int64) {
        settle(reservation, actual: reservation.demands.map { _ in 0 }, now: now)
    }

    /// Keeps a long request's permits (a stream) from expiring.
    public func renew(_ reservation: Reservation, now: Int64) {
        state.withLock { state in
            for index in reservation.demands.indices {
                guard case .concurrent(_, let ttl) = reservation.demands[index].rule else { continue }
                state.counters[reservation.demands[index].key]?.counter.withLeases { _ = $0.renew(reservation.lease, now: now, ttl: ttl) }
            }
        }
    }

    public func remaining(_ demands: [LimitDemand], now: Int64) -> [Int64] {
        demands.map { demand in
            state.withLock { state in
                state.counters[demand.key].flatMap { Self.matching($0.counter, demand.rule) }.map { Self.remaining($0, now: now) }
                    ?? demand.rule.capacity
            }
        }
    }

    /// Units left on a counter now (nil: never used, so its whole limit).
    public func remaining(_ key: CounterKey, now: Int64) -> Int64? {
        state.withLock { state in state.counters[key].map { Self.remaining($0.counter, now: now) } }
    }

    /// Units left on the counter named by `counter` alone (`CounterKey(_:)`).
    public func remaining(_ counter: String, now: Int64) -> Int64? {
        remaining(CounterKey(counter), now: now)
    }

    private static func remaining(_ counter: CounterState, now: Int64) -> Int64 {
        switch counter {
        case .rate(let gcra): gcra.remaining(now: now)
        case .quota(let quota): quota.remaining(now: now)
        case .concurrent(let leases): Int64(leases.available(now: now))
        }
    }

    /// A stored state whose rule changed (a configuration reload) starts again.
    private static func matching(_ state: CounterState, _ rule: LimitRule) -> CounterState? {
        switch (state, rule) {
        case (.rate(let gcra), .rate(let limit, let period)) where gcra.limit == max(limit, 1) && gcra.period == max(period, 1): state
        case (.quota(let quota), .quota(let limit, let calendar)) where quota.limit == max(limit, 0) && quota.calendar == calendar: state
        case (.concurrent(let leases), .concurrent(let limit, _)) where leases.limit == max(limit, 0): state
        default: nil
        }
    }

    private static func store(_ state: inout State, _ key: CounterKey, _ entry: Entry, now: Int64, limit: Int) {
        if state.counters.count >= limit {
            // Full: drop every counter a fresh one would equal; if that leaves more than fifteen sixteenths, also the
            // least recently used down to them, so that the scan is paid once per many new counters, not by each
            // (callers choose the number of counters: one each would make every request a full scan).
            let idle = state.counters.filter { $0.value.counter.isIdle(now: now) }.keys
            for key in idle { state.counters[key] = nil }
            let target = limit - max(limit / 16, 1)
            if state.counters.count > target {
                let oldest = state.counters.sorted { $0.value.touched < $1.value.touched }.prefix(state.counters.count - target)
                for (key, _) in oldest { state.counters[key] = nil }
            }
        }
        state.counters[key] = entry
    }
}
