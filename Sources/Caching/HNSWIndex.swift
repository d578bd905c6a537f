/// An approximate nearest-neighbour index over L2-normalised vectors (cosine similarity): a hierarchical navigable
/// small world graph (Malkov & Yashunin, 2016). Search cost grows with the logarithm of the size instead of linearly.
///
/// Not thread-safe: the semantic store uses it under its lock. Removal marks a node deleted (it still routes
/// searches but is never returned); the owner rebuilds the index when too many are deleted.
struct HNSWIndex {
    /// Links per node above the bottom layer (twice as many on the bottom layer).
    let m: Int
    let efConstruction: Int
    let efSearch: Int
    private let levelFactor: Double

    private(set) var vectors: [[Float]] = []
    /// Neighbours of each node, per layer (layer 0 first).
    private var links: [[[Int32]]] = []
    private(set) var deleted: [Bool] = []
    private(set) var deletedCount = 0
    private var entryPoint: Int = -1
    private var topLayer = -1
    private var random = SplitMix(seed: 0x5EED)

    init(m: Int = 16, efConstruction: Int = 100, efSearch: Int = 64) {
        self.m = m
        self.efConstruction = efConstruction
        self.efSearch = efSearch
        self.levelFactor = 1 / log(Double(max(m, 2)))
    }

    var count: Int { vectors.count - deletedCount }

    /// Adds a vector; returns its node number.
    @discardableResult mutating func insert(_ vector: [Float]) -> Int {
        let node = vectors.count
        let level = Int(-log(max(random.nextUnit(), 1e-12)) * levelFactor)
        vectors.append(vector)
        links.append(Array(repeating: [], count: level + 1))
        deleted.append(false)
        guard entryPoint >= 0 else {
            entryPoint = node
            topLayer = level
            return node
        }
        var current = entryPoint
        if topLayer > level {
            for layer in stride(from: topLayer, to: level, by: -1) {
                current = greedy(vector, from: current, layer: layer)
            }
        }
        var entries = [current]
        for layer in stride(from: min(level, topLayer), through: 0, by: -1) {
            let candidates = searchLayer(vector, entries: entries, ef: efConstruction, layer: layer)
            let limit = layer == 0 ? 2 * m : m
            let chosen = Array(candidates.prefix(limit)).map(\.node)
            links[node][layer] = chosen.map(Int32.init)
            for neighbour in chosen {
                links[neighbour][layer].append(Int32(node))
                if links[neighbour][layer].count > limit { prune(neighbour, layer: layer, limit: limit) }
            }
            entries = candidates.map(\.node)
        }
        if level > topLayer {
            topLayer = level
            entryPoint = node
        }
        return node
    }

    mutating func markDeleted(_ node: Int) {
        guard node < deleted.count, !deleted[node] else { return }
        deleted[node] = true
        deletedCount += 1
    }

    /// Up to `limit` live nodes nearest to `vector`, best first, with their similarity.
    func search(_ vector: [Float], limit: Int) -> [(node: Int, similarity: Float)] {
        guard entryPoint >= 0 else { return [] }
        var current = entryPoint
        if topLayer > 0 {
            for layer in stride(from: topLayer, to: 0, by: -1) { current = greedy(vector, from: current, layer: layer) }
        }
        let found = searchLayer(vector, entries: [current], ef: max(efSearch, limit), layer: 0)
        return found.lazy.filter { !deleted[$0.node] }.prefix(limit).map { ($0.node, $0.similarity) }
    }

    // MARK: Internals

    private func similarity(_ a: [Float], _ node: Int) -> Float {
        InMemorySemanticCache.dot(a, vectors[node])
    }

    private func greedy(_ vector: [Float], from start: Int, layer: Int) -> Int {
        var current = start
        var best = similarity(vector, current)
        var improved = true
        while improved {
            improved = false
            for neighbour in links[current][layer] {
                let score = similarity(vector, Int(neighbour))
                if score > best {
                    best = score
                    current = Int(neighbour)
                    improved = true
                }
            }
        }
        return current
    }

    /// Best-first search of one layer, keeping the `ef` most similar nodes found; returns them best first.
    private func searchLayer(_ vector: [Float], entries: [Int], ef: Int, layer: Int) -> [(node: Int, similarity: Float)] {
        var visited = Set<Int>(entries)
        var candidates = entries.map { (node: $0, similarity: similarity(vector, $0)) }
        var results = candidates
        candidates.sort { $0.similarity < $1.similarity }  // best last, popped first
        results.sort { $0.similarity > $1.similarity }
        if results.count > ef { results.removeLast(results.count - ef) }
        while let candidate = candidates.popLast() {
            if results.count >= ef, let worst = results.last, candidate.similarity < worst.similarity { break }
            for neighbour in links[candidate.node][layer] {
                let node = Int(neighbour)
                guard visited.insert(node).inserted else { continue }
                let score = similarity(vector, node)
                if results.count < ef || score > results.last!.similarity {
                    let position = candidates.firstIndex { $0.similarity > score } ?? candidates.count
                    candidates.insert((node, score), at: position)
                    let slot = results.firstIndex { $0.similarity < score } ?? results.count
                    results.insert((node, score), at: slot)
                    if results.count > ef { results.removeLast() }
                }
            }
        }
        return results
    }

    /// Keeps a node's `limit` most similar neighbours on `layer`.
    private mutating func prune(_ node: Int, layer: Int, limit: Int) {
        // Scored into a local first: a closure reading `self` (for `similarity`) while `links` is being accessed
        // is an exclusivity conflict, which debug builds trap on.
        let base = vectors[node]
        var ranked: [(neighbour: Int32, score: Float)] = []
        for neighbour in links[node][layer] {
            ranked.append((neighbour, InMemorySemanticCache.dot(base, vectors[Int(neighbour)])))
        }
        ranked.sort { $0.score > $1.score }
        links[node][layer] = ranked.prefix(limit).map(\.neighbour)
    }
}

/// A small seeded generator for the index's level draws.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func nextUnit() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
