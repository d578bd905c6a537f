import SwitchyardCore

/// Turns text into an L2-normalised sentence embedding (the on-device MiniLM encoder), off the cooperative pool.
public protocol TextEmbedder: Sendable {
    /// The embedding, or `nil` when the encoder is too busy to answer without making the request wait.
    func embed(_ text: String) async -> [Float]?
}

/// A semantic-cache entry: the question it answered, its embedding, and the answer.
public struct SemanticEntry: Sendable {
    public var id: String
    /// The compatibility fingerprint: tenant, model, prompts before the last user message, tools, parameters.
    public var namespace: String
    public var text: String
    public var vector: [Float]
    public var answer: CachedAnswer

    /// What the entry holds in memory, roughly: its answer, question, vector and keys.
    public var approximateBytes: Int {
        answer.approximateBytes + text.utf8.count + vector.count * 4 + id.utf8.count + namespace.utf8.count + 128
    }

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
    /// Entries in `namespace` (decides whether a search leaves the event loop).
    func size(of namespace: String) -> Int
    /// Removes one entry (feedback); returns it if it was there.
    @discardableResult func remove(id: String) -> SemanticEntry?
    @discardableResult func removeAll(tenant: String?) -> Int
}

/// An in-process store. Entries are grouped by namespace; a namespace is scanned exactly while it is small and gets
/// an HNSW index once it holds `annThreshold` entries (searches then cost about the logarithm of its size). Bounded in
/// entries and in bytes (answers, questions and vectors), oldest out first; expired entries are dropped when met.
public final class InMemorySemanticCache: SemanticCacheStore {
    struct Namespace {
        var entries: [String: SemanticEntry] = [:]
        var index: HNSWIndex?
        var nodeIDs: [String] = []
        var nodeOf: [String: Int] = [:]

        mutating func buildIndex() {
            var index = HNSWIndex()
            nodeIDs = []
            nodeOf = [:]
            for (id, entry) in entries {
                nodeOf[id] = index.insert(entry.vector)
                nodeIDs.append(id)
            }
            self.index = index
        }

        mutating func add(_ entry: SemanticEntry, annThreshold: Int) {
            entries[entry.id] = entry
            if index != nil {
                nodeOf[entry.id] = index!.insert(entry.vector)
                nodeIDs.append(entry.id)
            } else if entries.count >= annThreshold {
                buildIndex()
            }
        }

        mutating func remove(_ id: String) -> SemanticEntry? {
            guard let entry = entries.removeValue(forKey: id) else { return nil }
            if let node = nodeOf.removeValue(forKey: id) {
                index?.markDeleted(node)
                // Rebuild once a third of the graph is dead weight.
                if let index, index.deletedCount * 3 > index.count + index.deletedCount { buildIndex() }
            }
            return entry
        }
    }

    struct State {
        var namespaces: [String: Namespace] = [:]
        var namespaceOf: [String: String] = [:]
        /// Insertion order, for eviction (ids; removed ones are skipped).
        var order: [String] = []
        var orderStart = 0
        var count = 0
        var bytes = 0
    }

    public let maxEntries: Int
    /// The most bytes held, by `SemanticEntry.approximateBytes`.
    public let maxBytes: Int
    /// Namespace size from which searches go through the HNSW index instead of a full scan.
    public let annThreshold: Int
    private let state = Locked(State())

    public init(maxEntries: Int, maxBytes: Int = 256 << 20, annThreshold: Int = 2000) {
        self.maxEntries = max(1, maxEntries)
        self.maxBytes = max(1, maxBytes)
        self.annThreshold = max(2, annThreshold)
    }

    public var count: Int { state.withLock { $0.count } }
    public var bytes: Int { state.withLock { $0.bytes } }

    public func size(of namespace: String) -> Int {
        state.withLock { $0.namespaces[namespace]?.entries.count ?? 0 }
    }

    /// Whether `namespace` is searched through its ANN index (for tests and metrics).
    public func usesIndex(_ namespace: String) -> Bool {
        state.withLock { $0.namespaces[namespace]?.index != nil }
    }

    public func nearest(_ vector: [Float], namespace: String, minimum: Float, limit: Int, now: ContinuousClock.Instant)
        -> [SemanticMatch]
    {
        state.withLock { state -> [SemanticMatch] in
            guard var space = state.namespaces[namespace] else { return [] }
            var matches: [SemanticMatch] = []
            var expired: [String] = []
            if let index = space.index {
                // A few more than asked for: some may have expired.
                for (node, similarity) in index.search(vector, limit: limit * 2) where similarity >= minimum {
                    guard let entry = space.entries[space.nodeIDs[node]] else { continue }
                    if entry.answer.expiresAt <= now { expired.append(entry.id); continue }
                    matches.append(SemanticMatch(entry: entry, similarity: similarity))
                }
            } else {
                for entry in space.entries.values {
                    if entry.answer.expiresAt <= now { expired.append(entry.id); continue }
                    let similarity = Self.dot(vector, entry.vector)
                    if similarity >= minimum { matches.append(SemanticMatch(entry: entry, similarity: similarity)) }
                }
            }
            if !expired.isEmpty {
                for id in expired {
                    guard let gone = space.remove(id) else { continue }
                    state.namespaceOf[id] = nil
                    state.count -= 1
                    state.bytes -= gone.approximateBytes
                }
                state.namespaces[namespace] = space.entries.isEmpty ? nil : space
            }
            matches.sort { $0.similarity > $1.similarity }
            return Array(matches.prefix(limit))
        }
    }

    public func insert(_ entry: SemanticEntry) {
        let annThreshold = self.annThreshold
        state.withLock { state in
            if state.namespaceOf[entry.id] != nil { _ = Self.remove(entry.id, from: &state) }
            state.namespaces[entry.namespace, default: Namespace()].add(entry, annThreshold: annThreshold)
            state.namespaceOf[entry.id] = entry.namespace
            state.order.append(entry.id)
            state.count += 1
            state.bytes += entry.approximateBytes
            while state.count > maxEntries || state.bytes > maxBytes, state.orderStart < state.order.count {
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
            let doomed = state.namespaces.values.flatMap { space in
                space.entries.values.filter { tenant == nil || $0.answer.tenant == tenant }.map(\.id)
            }
            for id in doomed { _ = Self.remove(id, from: &state) }
            return doomed.count
        }
    }

    private static func remove(_ id: String, from state: inout State) -> SemanticEntry? {
        guard let namespace = state.namespaceOf.removeValue(forKey: id), var space = state.namespaces[namespace],
              let entry = space.remove(id) else { return nil }
        state.namespaces[namespace] = space.entries.isEmpty ? nil : space
        state.count -= 1
        state.bytes -= entry.approximateBytes
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
