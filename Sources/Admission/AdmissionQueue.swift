public import SwitchyardCore

/// The requests waiting for one deployment group's budget, in the order they are to be granted: P0 before P1 before
/// P2, except that P2 is granted `p2Share` of the grants made while it waits (so it never starves); within a
/// priority, start-time fair queueing between tenants (each tenant's requests are tagged with a virtual start time,
/// `max(virtual time, the tenant's last finish)`, and finish `start + cost / weight`; the lowest start goes first),
/// so one tenant's burst queues behind itself, not in front of the others.
///
/// A value with time passed in (nanoseconds): the I/O shell enqueues a ticket, asks who is `next`, reports a
/// `grant` once that request's budget was reserved, removes the cancelled and collects the `expired`. Bounded: at
/// `capacity` a new ticket sheds the one that would be granted last among the lowest priority, when that one comes
/// after it; otherwise the new ticket is refused. Every map is keyed by waiting tickets only.
public struct AdmissionQueue: Sendable {
    public struct Settings: Sendable, Hashable {
        /// Tickets waiting at most, all priorities together.
        public var capacity: Int
        /// The share of grants P2 gets while higher priorities wait too (0…1).
        public var p2Share: Double

        public init(capacity: Int = 10_000, p2Share: Double = 0.05) {
            self.capacity = max(capacity, 1)
            self.p2Share = p2Share.isFinite ? min(max(p2Share, 0), 1) : 0.05
        }
    }

    /// One waiting request.
    public struct Ticket: Sendable, Hashable {
        public var id: UInt64
        public var priority: Priority
        public var tenant: String
        /// What it takes from the budget (tokens): its share of the tenant's fair part.
        public var cost: Double
        /// The tenant's weight (a tenant of weight 2 gets twice the tokens of a tenant of weight 1).
        public var weight: Double
        /// When it is given up, in the clock of `now`.
        public var deadline: Int64

        public init(id: UInt64, priority: Priority, tenant: String, cost: Double = 1, weight: Double = 1, deadline: Int64) {
            self.id = id
            self.priority = priority
            self.tenant = tenant
            self.cost = cost.isFinite ? max(cost, 0) : 0
            self.weight = weight.isFinite && weight > 0 ? min(max(weight, 0.001), 1000) : 1
            self.deadline = deadline
        }
    }

    public enum Enqueued: Sendable, Hashable {
        case waiting
        /// Waiting, and to make room the ticket with this id was shed.
        case waitingShed(UInt64)
        /// Refused: the queue is full of requests that come before it.
        case full
        /// Refused: its deadline has passed, or an id already waiting.
        case invalid
    }

    struct Entry: Sendable, Hashable {
        var ticket: Ticket
        var start: Double
        /// Arrival order: the tie-break between equal starts.
        var sequence: UInt64
    }

    /// One priority's tenants.
    struct Level: Sendable {
        /// The start of the last ticket granted.
        var virtualTime: Double = 0
        /// Per tenant with tickets waiting: their ids in order, and the finish of the last one enqueued.
        var tenants: [String: (ids: [UInt64], finish: Double)] = [:]
        var count = 0
    }

    public let settings: Settings
    private var entries: [UInt64: Entry] = [:]
    private var levels = [Level](repeating: Level(), count: Priority.allCases.count)
    private var sequence: UInt64 = 0
    /// P2's owed grants: `p2Share` added per grant to a higher priority while P2 waits, one spent per P2 grant.
    private var p2Credit = 0.0

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    public func count(_ priority: Priority) -> Int { levels[priority.rawValue].count }
    public func contains(_ id: UInt64) -> Bool { entries[id] != nil }

    /// The earliest deadline waiting (the shell's next expiry).
    public var nextDeadline: Int64? { entries.values.lazy.map(\.ticket.deadline).min() }

    public mutating func enqueue(_ ticket: Ticket, now: Int64) -> Enqueued {
        guard ticket.deadline > now, entries[ticket.id] == nil else { return .invalid }
        let level = levels[ticket.priority.rawValue]
        let start = max(level.virtualTime, level.tenants[ticket.tenant]?.finish ?? level.virtualTime)
        var shed: UInt64?
        if entries.count >= settings.capacity {
            // The lowest priority waiting, and in it the ticket granted last.
            guard let lowest = Priority.allCases.last(where: { levels[$0.rawValue].count > 0 }),
                  let last = self.last(in: lowest),
                  lowest > ticket.priority || (lowest == ticket.priority && last.start > start)
            else { return .full }
            remove(last.ticket.id)
            shed = last.ticket.id
        }
        sequence &+= 1
        let entry = Entry(ticket: ticket, start: start, sequence: sequence)
        entries[ticket.id] = entry
        let finish = start + ticket.cost / ticket.weight
        levels[ticket.priority.rawValue].tenants[ticket.tenant, default: (ids: [], finish: start)].ids.append(ticket.id)
        levels[ticket.priority.rawValue].tenants[ticket.tenant]?.finish = finish
        levels[ticket.priority.rawValue].count += 1
        return shed.map { .waitingShed($0) } ?? .waiting
    }

    /// The ticket to grant next, left waiting until `grant`.
    public var next: UInt64? {
        if levels[Priority.p2.rawValue].count > 0, p2Credit >= 1 || (levels[0].count == 0 && levels[1].count == 0) {
            return first(in: .p2)?.ticket.id
        }
        for priority in [Priority.p0, .p1] where levels[priority.rawValue].count > 0 {
            return first(in: priority)?.ticket.id
        }
        return nil
    }

    /// The ticket's budget was reserved: it leaves the queue, and the order moves on.
    @discardableResult
    public mutating func grant(_ id: UInt64) -> Bool {
        guard let entry = entries[id] else { return false }
        let priority = entry.ticket.priority
        if priority == .p2 {
            p2Credit = max(p2Credit - 1, 0)
        } else if levels[Priority.p2.rawValue].count > 0 {
            p2Credit = min(p2Credit + settings.p2Share, 1)
        }
        levels[priority.rawValue].virtualTime = max(levels[priority.rawValue].virtualTime, entry.start)
        remove(id)
        if levels[Priority.p2.rawValue].count == 0 { p2Credit = 0 }
        return true
    }

    /// A ticket given up (its client went away, or it was taken elsewhere).
    @discardableResult
    public mutating func cancel(_ id: UInt64) -> Bool {
        guard entries[id] != nil else { return false }
        remove(id)
        if levels[Priority.p2.rawValue].count == 0 { p2Credit = 0 }
        return true
    }

    /// Removes and returns the tickets whose deadline is at or before `now`.
    public mutating func expire(now: Int64) -> [UInt64] {
        let expired = entries.values.filter { $0.ticket.deadline <= now }.sorted { $0.sequence < $1.sequence }.map(\.ticket.id)
        for id in expired { remove(id) }
        if levels[Priority.p2.rawValue].count == 0 { p2Credit = 0 }
        return expired
    }

    /// How many tickets would be granted before this one if nothing else arrived (P2's share aside); nil when it is
    /// not waiting.
    public func position(_ id: UInt64) -> Int? {
        guard let entry = entries[id] else { return nil }
        var ahead = 0
        for priority in Priority.allCases where priority < entry.ticket.priority { ahead += levels[priority.rawValue].count }
        for (_, tenant) in levels[entry.ticket.priority.rawValue].tenants {
            for other in tenant.ids {
                guard let candidate = entries[other] else { continue }
                if (candidate.start, candidate.sequence) < (entry.start, entry.sequence) { ahead += 1 }
            }
        }
        return ahead
    }

    public func ticket(_ id: UInt64) -> Ticket? { entries[id]?.ticket }

    /// The head of each tenant's queue is its lowest start: the lowest of those.
    private func first(in priority: Priority) -> Entry? {
        var best: Entry?
        for (_, tenant) in levels[priority.rawValue].tenants {
            guard let id = tenant.ids.first, let entry = entries[id] else { continue }
            if best.map({ (entry.start, entry.sequence) < ($0.start, $0.sequence) }) ?? true { best = entry }
        }
        return best
    }

    private func last(in priority: Priority) -> Entry? {
        var worst: Entry?
        for (_, tenant) in levels[priority.rawValue].tenants {
            guard let id = tenant.ids.last, let entry = entries[id] else { continue }
            if worst.map({ (entry.start, entry.sequence) > ($0.start, $0.sequence) }) ?? true { worst = entry }
        }
        return worst
    }

    private mutating func remove(_ id: UInt64) {
        guard let entry = entries.removeValue(forKey: id) else { return }
        let priority = entry.ticket.priority.rawValue
        let tenant = entry.ticket.tenant
        levels[priority].count -= 1
        guard var queued = levels[priority].tenants[tenant] else { return }
        if queued.ids.first == id { queued.ids.removeFirst() } else { queued.ids.removeAll { $0 == id } }
        if queued.ids.isEmpty {
            // A tenant with nothing waiting starts again at the virtual time when it returns.
            levels[priority].tenants[tenant] = nil
        } else {
            levels[priority].tenants[tenant] = queued
        }
    }
}
