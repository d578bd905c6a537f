import SwitchyardCore

/// Turns text into an L2-normalised sentence embedding (the on-device MiniLM encoder), off the cooperative pool.
public protocol TextEmbedder: Sendable {
    func embed(_ text: String) async -> [Float]
}

/// A semantic-cache entry: the question it answered, its embedding, and the answer.
public struct SemanticEntry: Sendable {
    public var id: String
    /// The compatibility fingerprint: tenant, model, prompts before the last user message, tools, parameters.
    public var namespace: String
    public var text: String
    public var vector: [Float]
    public var answer: CachedAnswer

    public init(id: String, namespace: String, text: String, vector: [Float], answer: CachedAnswer) {
        self.id = id
        self.namespace = namespace
        self.text = text
        self.vector = vector
        self.answer = answer
    }
}

/// A candidate found by a search.
public struct SemanticMatch: Sendable {
    public var entry: SemanticEntry
    public var similarity: Float
}

/// Where semantic-cache entries live, searched by cosine similarity inside one namespace.
public protocol SemanticCacheStore: Sendable {
    /// The nearest entries in `namespace` with similarity at least `minimum`, best first, at most `limit`.
    func nearest(_ vector: [Float], namespace: String, minimum: Float, limit: Int, now: ContinuousClock.Instant) -> [SemanticMatch]
    func insert(_ entry: SemanticEntry)
    /// Removes one entry (feedback); returns it if it was there.
    @discardableResult func remove(id: String) -> SemanticEntry?
    @discardableResult func removeAll(tenant: String?) -> Int
}

/// An in-process store: entries grouped by namespace and scanned exactly (a namespace holds the rephrasings of one
/// conversation context for one tenant and model, so scans stay short); bounded in entries, oldest out first;
/// expired entries are dropped when met.
public final class InMemorySemanticCache: SemanticCacheStore {
    struct State {
        var namespaces: [String: [SemanticEntry]] = [:]
        var namespaceOf: [String: String] = [:]
        /// Insertion order, for eviction (ids; removed ones are skipped).
        var order: [String] = []
        var orderStart = 0
        var count = 0
    }

    public let maxEntries: Int
    private let state = Locked(State())

    public init(maxEntries: Int) {
        self.maxEntries = max(1, maxEntries)
    }

    public var count: Int { state.withLock { $0.count } }

    public func nearest(_ vector: [Float], namespace: String, minimum: Float, limit: Int, now: ContinuousClock.Instant)
        -> [SemanticMatch]
    {
        state.withLock { state -> [SemanticMatch] in
            guard var entries = state.namespaces[namespace] else { return [] }
            let before = entries.count
            entries.removeAll { $0.answer.expiresAt <= now }
            if entries.count != before {
                state.count -= before - entries.count
                state.namespaces[namespace] = entries.isEmpty ? nil : entries
            }
            var matches: [SemanticMatch] = []
            for entry in entries {
                let similarity = Self.dot(vector, entry.vector)
                if similarity >= minimum { matches.append(SemanticMatch(entry: entry, similarity: similarity)) }
            }
            matches.sort { $0.similarity > $1.similarity }
            return Array(matches.prefix(limit))
        }
    }

    public func insert(_ entry: SemanticEntry) {
        state.withLock { state in
            state.namespaces[entry.namespace, default: []].append(entry)
            state.namespaceOf[entry.id] = entry.namespace
            state.order.append(entry.id)
            state.count += 1
            while state.count > maxEntries, state.orderStart < state.order.count {
                let oldest = state.order[state.orderStart]
                state.orderStart += 1
                _ = Self.remove(oldest, from: &state)
            }
            if state.orderStart > 4096, state.orderStart * 2 > state.order.count {
                state.order.removeFirst(state.orderStart)
                state.orderStart = 0
            }
        }
    }

    @discardableResult public func remove(id: String) -> SemanticEntry? {
        state.withLock { state in Self.remove(id, from: &state) }
    }

    @discardableResult public func removeAll(tenant: String?) -> Int {
        state.withLock { state -> Int in
            var removed = 0
            for (namespace, entries) in state.namespaces {
                let kept = entries.filter { tenant != nil && $0.answer.tenant != tenant }
                removed += entries.count - kept.count
                for entry in entries where tenant == nil || entry.answer.tenant == tenant { state.namespaceOf[entry.id] = nil }
                state.namespaces[namespace] = kept.isEmpty ? nil : kept
            }
            state.count -= removed
            return removed
        }
    }

    private static func remove(_ id: String, from state: inout State) -> SemanticEntry? {
        guard let namespace = state.namespaceOf.removeValue(forKey: id),
              var entries = state.namespaces[namespace], let index = entries.firstIndex(where: { $0.id == id }) else { return nil }
        let entry = entries.remove(at: index)
        state.namespaces[namespace] = entries.isEmpty ? nil : entries
        state.count -= 1
        return entry
    }

    /// Cosine similarity of two L2-normalised vectors.
    public static func dot(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return -1 }
        var sum: Float = 0
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                for index in 0..<a.count { sum += a[index] * b[index] }
            }
        }
        return sum
    }
}
