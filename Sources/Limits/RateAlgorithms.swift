/// The limiter algorithms, as pure value types with time passed in (Unix nanoseconds, wall clock: state shared by
/// instances must mean the same to each of them). Every number a caller passes is range-checked here; nothing traps.

/// A rate of `limit` units per `period`, smooth (the generic cell rate algorithm): each unit admitted moves the
/// theoretical arrival time (TAT) on by `period / limit`, and a reservation is admitted while the TAT it would leave
/// stays within one `period` of now. A client may spend its whole allowance at once, and gets it back continuously
/// (one unit every `period / limit`), not all at once when a minute begins: over any span S at most
/// `limit + S × limit / period` units pass, so a fixed window's double burst at its boundary (2 × limit within
/// moments) cannot happen, and over time the rate is the limit.
///
/// Chosen over a token bucket because its whole state is one number (the TAT): one field in Redis, one comparison
/// in a script, nothing to refill; the same admissions as a bucket of capacity `limit` refilled at `limit/period`.
public struct GCRA: Sendable, Hashable {
    public let limit: Int64
    public let period: Int64
    /// Theoretical arrival time, Unix nanoseconds; at or before now: the full allowance is free.
    public private(set) var tat: Int64

    public init(limit: Int64, period: Int64, tat: Int64 = 0) {
        self.limit = max(limit, 1)
        self.period = max(period, 1)
        self.tat = tat
    }

    /// How far `units` move the TAT: units × period / limit, rounded up, saturating (a cost past any limit is never
    /// admitted rather than overflowing).
    public func advance(_ units: Int64) -> Int64 {
        guard units > 0 else { return 0 }
        let (high, low) = units.multipliedFullWidth(by: period)
        guard high < limit else { return .max }
        let (quotient, remainder) = limit.dividingFullWidth((high: high, low: low))
        return remainder > 0 ? quotient &+ 1 : quotient
    }

    public enum Decision: Sendable, Hashable {
        /// Admitted; the allowance left now, and when all of it will be free again (nanoseconds from now).
        case admitted(remaining: Int64, resetIn: Int64)
        /// Refused; when the same reservation would be admitted (nanoseconds from now), nil when never (it costs
        /// more than the whole limit).
        case refused(retryIn: Int64?, remaining: Int64, resetIn: Int64)
    }

    /// What reserving `units` at `now` would do, without doing it.
    public func check(_ units: Int64, now: Int64) -> Decision {
        let cost = advance(units)
        let start = max(tat, now)
        guard units <= limit, start <= .max - cost else {
            return .refused(retryIn: nil, remaining: remaining(now: now), resetIn: resetIn(now: now))
        }
        let ahead = Self.gap(start + cost, now)
        if ahead <= period {
            return .admitted(remaining: Self.units(period - ahead, limit: limit, period: period), resetIn: ahead)
        }
        return .refused(retryIn: ahead - period, remaining: remaining(now: now), resetIn: resetIn(now: now))
    }

    /// a − b, saturating (a TAT read from a shared store may be anything).
    static func gap(_ a: Int64, _ b: Int64) -> Int64 {
        let (difference, overflow) = a.subtractingReportingOverflow(b)
        return overflow ? (a > b ? .max : .min) : difference
    }

    /// Reserves `units` at `now` when the rate allows it.
    public mutating func reserve(_ units: Int64, now: Int64) -> Decision {
        let decision = check(units, now: now)
        if case .admitted = decision { tat = max(tat, now) + advance(units) }
        return decision
    }

    /// Settles a reservation: `delta` units more (positive: the real usage was larger) or fewer (negative: given
    /// back) than were reserved. Giving back never moves the TAT before now (what is past cannot be refunded into
    /// a burst); taking more may push it past one period, which then delays the next reservations.
    public mutating func adjust(by delta: Int64, now: Int64) {
        if delta > 0 {
            let cost = advance(delta)
            tat = max(tat, now) > .max - cost ? .max : max(tat, now) + cost
        } else if delta < 0 {
            let refund = advance(delta == .min ? .max : -delta)
            tat = max(now, tat > .min + refund ? tat - refund : now)
        }
    }

    /// Units that could be reserved now.
    public func remaining(now: Int64) -> Int64 {
        let used = Self.gap(max(tat, now), now)
        return used >= period ? 0 : Self.units(period - used, limit: limit, period: period)
    }

    /// Nanoseconds until the whole allowance is free.
    public func resetIn(now: Int64) -> Int64 { max(Self.gap(tat, now), 0) }

    /// Units that fit in `span` nanoseconds of TAT: span × limit / period, rounded down.
    static func units(_ span: Int64, limit: Int64, period: Int64) -> Int64 {
        guard span > 0 else { return 0 }
        let (high, low) = span.multipliedFullWidth(by: limit)
        guard high < period else { return limit }
        return min(period.dividingFullWidth((high: high, low: low)).quotient, limit)
    }
}

/// A calendar period in UTC: a day, or a month.
public enum CalendarPeriod: String, Sendable, Hashable, CaseIterable {
    case day, month

    static let nanosecondsPerDay: Int64 = 86_400_000_000_000

    /// The period `now` falls in, as a number (days since 1970, or months since January 1970), and when it starts
    /// and ends (Unix nanoseconds).
    public func period(containing now: Int64) -> (index: Int64, start: Int64, end: Int64) {
        let day = now >= 0 ? now / Self.nanosecondsPerDay : (now + 1) / Self.nanosecondsPerDay - 1
        switch self {
        case .day:
            return (day, day * Self.nanosecondsPerDay, (day + 1) * Self.nanosecondsPerDay)
        case .month:
            let (year, month, _) = Self.civil(fromDays: day)
            let index = (year - 1970) * 12 + (month - 1)
            let start = Self.days(fromYear: year, month: month) * Self.nanosecondsPerDay
            let next = month == 12 ? Self.days(fromYear: year + 1, month: 1) : Self.days(fromYear: year, month: month + 1)
            return (index, start, next * Self.nanosecondsPerDay)
        }
    }

    /// Year, month (1–12) and day of a count of days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
    /// `civil_from_days`).
    public static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Days since 1970-01-01 of the first day of `month` in `year` (`days_from_civil`).
    static func days(fromYear year: Int64, month: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// A quota over a calendar period (a UTC day or month): exact, `limit` units per period, all of it free again when
/// the next period begins. For budgets and daily allowances, where the boundary is the point.
public struct CalendarQuota: Sendable, Hashable {
    public let limit: Int64
    public let calendar: CalendarPeriod
    public private(set) var periodIndex: Int64 = .min
    public private(set) var used: Int64 = 0

    public init(limit: Int64, calendar: CalendarPeriod) {
        self.limit = max(limit, 0)
        self.calendar = calendar
    }

    public enum Decision: Sendable, Hashable {
        case admitted(remaining: Int64, resetIn: Int64)
        /// Refused until the next period (nanoseconds from now); nil: never (more than the whole quota).
        case refused(retryIn: Int64?, remaining: Int64, resetIn: Int64)
    }

    private mutating func roll(to now: Int64) -> (index: Int64, start: Int64, end: Int64) {
        let period = calendar.period(containing: now)
        if period.index != periodIndex {
            periodIndex = period.index
            used = 0
        }
        return period
    }

    public func check(_ units: Int64, now: Int64) -> Decision {
        var copy = self
        return copy.reserve(units, now: now, commit: false)
    }

    public mutating func reserve(_ units: Int64, now: Int64) -> Decision {
        reserve(units, now: now, commit: true)
    }

    private mutating func reserve(_ units: Int64, now: Int64, commit: Bool) -> Decision {
        let period = roll(to: now)
        let units = max(units, 0)
        let left = max(limit - used, 0)
        guard units <= left else {
            return .refused(retryIn: units > limit ? nil : period.end - now, remaining: left, resetIn: period.end - now)
        }
        if commit { used += units }
        return .admitted(remaining: left - units, resetIn: period.end - now)
    }

    /// Settles a reservation made in the period `reservedIn` (its index): `delta` more or fewer units. A period
    /// that has ended is not reopened.
    public mutating func adjust(by delta: Int64, reservedIn: Int64, now: Int64) {
        _ = roll(to: now)
        guard reservedIn == periodIndex else { return }
        used = delta >= 0 ? (used > .max - delta ? .max : used + delta) : max(used - (delta == .min ? .max : -delta), 0)
    }

    public func remaining(now: Int64) -> Int64 {
        calendar.period(containing: now).index == periodIndex ? max(limit - used, 0) : limit
    }
}

/// Concurrency permits as leases: at most `limit` held at once; each expires `ttl` after it was taken or last
/// renewed, so an instance that crashed while holding some gives them back by itself.
public struct Leases: Sendable, Hashable {
    public let limit: Int
    /// Lease id → expiry (Unix nanoseconds).
    public private(set) var held: [UInt64: Int64] = [:]
    /// No lease expires before this (a lease released or renewed since may have moved it later): the held leases
    /// are scanned for expired ones only once it has passed, so each operation is O(1) amortized, not O(held).
    private var earliest: Int64 = .max

    public init(limit: Int) {
        self.limit = max(limit, 0)
    }

    private mutating func expire(now: Int64) {
        guard earliest <= now else { return }
        held = held.filter { $0.value > now }
        earliest = held.values.min() ?? .max
    }

    private mutating func hold(_ id: UInt64, now: Int64, ttl: Int64) {
        let expiry = now > .max - max(ttl, 0) ? .max : now + max(ttl, 0)
        held[id] = expiry
        earliest = min(earliest, expiry)
    }

    /// Whether `acquire` would succeed now, without taking anything.
    public func canAcquire(_ id: UInt64, now: Int64) -> Bool {
        held[id] != nil || available(now: now) > 0
    }

    /// Takes a permit for `id` until `now + ttl` when fewer than `limit` are held; false otherwise.
    public mutating func acquire(_ id: UInt64, now: Int64, ttl: Int64) -> Bool {
        expire(now: now)
        guard held[id] != nil || held.count < limit else { return false }
        hold(id, now: now, ttl: ttl)
        return true
    }

    /// Permits free now.
    public func available(now: Int64) -> Int {
        let active = earliest > now ? held.count : held.values.filter { $0 > now }.count
        return max(limit - active, 0)
    }

    public mutating func release(_ id: UInt64) {
        held[id] = nil
        if held.isEmpty { earliest = .max }
    }

    /// Extends a held lease (a long stream); false when it is no longer held.
    public mutating func renew(_ id: UInt64, now: Int64, ttl: Int64) -> Bool {
        expire(now: now)
        // Only a permit still held: one released (or expired, its holder presumed gone) is not taken again, so a
        // renewal that races the release cannot leak a permit.
        guard held[id] != nil else { return false }
        hold(id, now: now, ttl: ttl)
        return true
    }

    /// When the earliest lease expires (nanoseconds from now): a refused caller's honest retry-after upper bound.
    public func earliestExpiry(now: Int64) -> Int64? {
        held.values.filter { $0 > now }.min().map { $0 - now }
    }
}
