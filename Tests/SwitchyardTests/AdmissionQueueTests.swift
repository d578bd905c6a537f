import Admission
import SwitchyardCore
import Testing

/// The priority queue as a state machine: tickets, grants and time passed in.
@Suite struct AdmissionQueueTests {
    static let s: Int64 = 1_000_000_000

    static func ticket(_ id: UInt64, _ priority: Priority, _ tenant: String = "t", cost: Double = 1, weight: Double = 1,
                       deadline: Int64 = 100 * s) -> AdmissionQueue.Ticket {
        AdmissionQueue.Ticket(id: id, priority: priority, tenant: tenant, cost: cost, weight: weight, deadline: deadline)
    }

    /// Grants everything waiting, in the queue's order.
    static func drain(_ queue: inout AdmissionQueue) -> [UInt64] {
        var order: [UInt64] = []
        while let id = queue.next {
            queue.grant(id)
            order.append(id)
        }
        return order
    }

    @Test func higherPrioritiesGoFirstAndFIFOWithinATenant() {
        var queue = AdmissionQueue(settings: .init(p2Share: 0))
        for (id, priority) in [(1, Priority.p2), (2, .p1), (3, .p0), (4, .p2), (5, .p0), (6, .p1)] {
            #expect(queue.enqueue(Self.ticket(UInt64(id), priority), now: 0) == .waiting)
        }
        #expect(queue.position(3) == 0)
        #expect(queue.position(5) == 1)
        #expect(queue.position(2) == 2)
        #expect(queue.position(4) == 5)
        #expect(Self.drain(&queue) == [3, 5, 2, 6, 1, 4])
        #expect(queue.isEmpty)
        #expect(queue.next == nil)
    }

    @Test func p2GetsItsShareWhileHigherPrioritiesWait() {
        var queue = AdmissionQueue(settings: .init(p2Share: 0.25))
        var id: UInt64 = 0
        for _ in 0..<20 {
            id += 1
            _ = queue.enqueue(Self.ticket(id, .p0), now: 0)
        }
        for _ in 0..<5 {
            id += 1
            _ = queue.enqueue(Self.ticket(id, .p2), now: 0)
        }
        let order = Self.drain(&queue)
        // One P2 after every four P0 grants while both wait; the P0s keep their own order.
        let p2Positions = order.enumerated().filter { $0.element > 20 }.map(\.offset)
        #expect(p2Positions == [4, 9, 14, 19, 24])
        #expect(order.filter { $0 <= 20 } == Array(1...20))

        // No share: P2 waits until nothing else does.
        var strict = AdmissionQueue(settings: .init(p2Share: 0))
        _ = strict.enqueue(Self.ticket(1, .p2), now: 0)
        _ = strict.enqueue(Self.ticket(2, .p0), now: 0)
        _ = strict.enqueue(Self.ticket(3, .p1), now: 0)
        #expect(Self.drain(&strict) == [2, 3, 1])
    }

    @Test func aTenantsBurstDoesNotBlockAnotherTenant() {
        var queue = AdmissionQueue()
        // Tenant a queues 10 requests at once; b's 3 arrive after them.
        for id in 1...10 { _ = queue.enqueue(Self.ticket(UInt64(id), .p0, "a"), now: 0) }
        for id in 11...13 { _ = queue.enqueue(Self.ticket(UInt64(id), .p0, "b"), now: 0) }
        #expect(queue.position(11) == 1)
        let order = Self.drain(&queue)
        // Alternating while both wait: b is done within its first six grants, not after a's ten.
        #expect(order.prefix(6).filter { $0 > 10 }.count == 3)
        #expect(order.filter { $0 <= 10 } == Array(1...10))
    }

    @Test func fairnessIsByCostAndWeight() {
        // a's requests cost 4 tokens each, b's 1: b gets four grants for each of a's.
        var queue = AdmissionQueue()
        for id in 1...4 { _ = queue.enqueue(Self.ticket(UInt64(id), .p1, "a", cost: 4), now: 0) }
        for id in 11...22 { _ = queue.enqueue(Self.ticket(UInt64(id), .p1, "b", cost: 1), now: 0) }
        let order = Self.drain(&queue)
        let firstTen = order.prefix(10)
        #expect(firstTen.filter { $0 <= 4 }.count == 2)
        // Weight 4 on a evens the costs: one each in turn.
        var weighted = AdmissionQueue()
        for id in 1...4 { _ = weighted.enqueue(Self.ticket(UInt64(id), .p1, "a", cost: 4, weight: 4), now: 0) }
        for id in 11...14 { _ = weighted.enqueue(Self.ticket(UInt64(id), .p1, "b", cost: 1), now: 0) }
        let evened = Self.drain(&weighted)
        #expect(evened.prefix(4).filter { $0 <= 4 }.count == 2)
    }

    @Test func aFullQueueShedsTheLowestPriorityFirstAndTheBursterBeforeOthers() {
        var queue = AdmissionQueue(settings: .init(capacity: 3))
        #expect(queue.enqueue(Self.ticket(1, .p2, "a"), now: 0) == .waiting)
        #expect(queue.enqueue(Self.ticket(2, .p2, "a"), now: 0) == .waiting)
        #expect(queue.enqueue(Self.ticket(3, .p1, "a"), now: 0) == .waiting)
        // A P0 sheds the P2 that would be granted last.
        #expect(queue.enqueue(Self.ticket(4, .p0, "b"), now: 0) == .waitingShed(2))
        #expect(queue.count == 3)
        #expect(!queue.contains(2))
        // Another P2 of a comes after everything: refused.
        #expect(queue.enqueue(Self.ticket(5, .p2, "a"), now: 0) == .full)
        // Another P0 sheds the last P2.
        #expect(queue.enqueue(Self.ticket(6, .p0, "b"), now: 0) == .waitingShed(1))
        // Only P0 and P1 wait: a P1 of tenant c would start with a's P1, which arrived first: refused.
        #expect(queue.enqueue(Self.ticket(7, .p1, "c"), now: 0) == .full)
        #expect(Self.drain(&queue) == [4, 6, 3])

        // Within one priority, a tenant who has queued many is shed for one who has queued none.
        var fair = AdmissionQueue(settings: .init(capacity: 4))
        for id in 1...4 { _ = fair.enqueue(Self.ticket(UInt64(id), .p0, "burst"), now: 0) }
        #expect(fair.enqueue(Self.ticket(9, .p0, "quiet"), now: 0) == .waitingShed(4))
        #expect(fair.position(9) == 1)
    }

    @Test func deadlinesExpireAndCancelledTicketsLeave() {
        var queue = AdmissionQueue()
        #expect(queue.enqueue(Self.ticket(1, .p0, deadline: 5 * Self.s), now: 0) == .waiting)
        #expect(queue.enqueue(Self.ticket(2, .p1, deadline: 2 * Self.s), now: 0) == .waiting)
        #expect(queue.enqueue(Self.ticket(3, .p2, deadline: 9 * Self.s), now: 0) == .waiting)
        // Past its deadline already, or an id already waiting: refused.
        #expect(queue.enqueue(Self.ticket(4, .p0, deadline: 1 * Self.s), now: 1 * Self.s) == .invalid)
        #expect(queue.enqueue(Self.ticket(1, .p0), now: 0) == .invalid)
        #expect(queue.nextDeadline == 2 * Self.s)
        #expect(queue.expire(now: Self.s).isEmpty)
        #expect(queue.expire(now: 5 * Self.s) == [1, 2])
        #expect(queue.nextDeadline == 9 * Self.s)
        let cancelled = queue.cancel(3), again = queue.cancel(3)
        #expect(cancelled && !again)
        #expect(queue.isEmpty)
        #expect(queue.nextDeadline == nil)
        let granted = queue.grant(3)
        #expect(!granted)
    }

    @Test func hostileValuesAreClamped() {
        // Nonsense costs and weights neither trap nor reorder the queue beyond reason.
        var queue = AdmissionQueue(settings: .init(capacity: -5, p2Share: .nan))
        #expect(queue.settings.capacity == 1)
        #expect(queue.enqueue(Self.ticket(1, .p0, cost: .infinity, weight: 0), now: 0) == .waiting)
        #expect(queue.ticket(1)?.cost == 0)
        #expect(queue.ticket(1)?.weight == 1)
        #expect(queue.enqueue(Self.ticket(2, .p0, cost: -1, weight: .nan), now: .max - 1) == .invalid)
        #expect(Self.drain(&queue) == [1])
    }
}
