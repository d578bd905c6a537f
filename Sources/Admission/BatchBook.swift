/// Groups requests for the providers' batch APIs: a pure state machine, time passed in.
///
/// Requests join the open batch of their key (provider and upstream model: a batch file holds one model's
/// requests). A batch is sent when it holds `maxRequests` or when `window` has passed since its first request.
/// `pending` counts every request collected or sent and not yet answered; past `maxPending` a request is refused
/// (it is then sent on its own), so neither the book nor the batches in flight grow without bound.
public struct BatchBook<Key: Hashable & Sendable>: Sendable {
    public struct Settings: Sendable, Hashable {
        public var window: Int64
        public var maxRequests: Int
        public var maxPending: Int

        public init(window: Int64, maxRequests: Int, maxPending: Int) {
            self.window = window
            self.maxRequests = max(1, maxRequests)
            self.maxPending = max(1, maxPending)
        }
    }

    /// A batch ready to be sent: its key and its requests' ids in the order they came.
    public struct Batch: Sendable, Hashable {
        public var key: Key
        public var ids: [String]

        public init(key: Key, ids: [String]) {
            self.key = key
            self.ids = ids
        }
    }

    public enum Joined: Sendable, Hashable {
        /// The request waits in its key's open batch.
        case waiting
        /// The request completed its batch, which is to be sent now.
        case send(Batch)
        /// Too many requests are pending: send this one on its own.
        case full
    }

    struct Open: Sendable {
        var ids: [String]
        var opened: Int64
    }

    public let settings: Settings
    private var open: [Key: Open] = [:]
    private var keyOf: [String: Key] = [:]
    public private(set) var pending = 0

    public init(settings: Settings) {
        self.settings = settings
    }

    public mutating func join(_ id: String, key: Key, now: Int64) -> Joined {
        guard pending < settings.maxPending, keyOf[id] == nil else { return .full }
        pending += 1
        var batch = open[key] ?? Open(ids: [], opened: now)
        batch.ids.append(id)
        guard batch.ids.count >= settings.maxRequests else {
            open[key] = batch
            keyOf[id] = key
            return .waiting
        }
        open[key] = nil
        for other in batch.ids { keyOf[other] = nil }
        return .send(Batch(key: key, ids: batch.ids))
    }

    /// Takes a request out of its open batch (its caller went away before the batch was sent). False when it is in
    /// no open batch (already sent, or unknown).
    @discardableResult
    public mutating func leave(_ id: String) -> Bool {
        guard let key = keyOf.removeValue(forKey: id), var batch = open[key], let index = batch.ids.firstIndex(of: id) else { return false }
        batch.ids.remove(at: index)
        open[key] = batch.ids.isEmpty ? nil : batch
        pending -= 1
        return true
    }

    /// The batches whose window has passed at `now`, taken out of the book to be sent.
    public mutating func due(now: Int64) -> [Batch] {
        var ready: [Batch] = []
        for (key, batch) in open where now &- batch.opened >= settings.window {
            ready.append(Batch(key: key, ids: batch.ids))
        }
        for batch in ready {
            open[batch.key] = nil
            for id in batch.ids { keyOf[id] = nil }
        }
        return ready
    }

    /// When the next open batch's window ends; nil when none is open.
    public var nextDue: Int64? {
        open.values.map { $0.opened &+ settings.window }.min()
    }

    /// `count` requests of a sent batch were answered (or given up).
    public mutating func answered(_ count: Int) {
        pending = max(0, pending - count)
    }

    /// Requests waiting in open batches.
    public var collecting: Int { keyOf.count }
}
