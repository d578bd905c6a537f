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
