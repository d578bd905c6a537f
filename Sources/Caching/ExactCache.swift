public import NIOCore
public import SwitchyardCore
public import SwitchyardModels

/// The exact-cache key: SHA-256 over the tenant's namespace, the prompt version, the request's API format, and the
/// request in its canonical wire form with sorted keys: model, system prompt, messages, tools, tool choice,
/// response format, temperature and every other generation parameter, including ones the gateway does not
/// interpret. Left out: `stream` and `stream_options` (a hit is replayed as a stream when asked for one) and the
/// end-user id (it does not change the answer).
public enum ExactCacheKey {
    public static func make(_ request: ChatRequest, tenant: String, promptVersion: String?) -> String {
        var canonical = request
        canonical.stream = false
        canonical.streamIncludeUsage = false
        canonical.user = nil
        let body: JSONValue? = switch request.sourceFormat {
        case .openAI: OpenAIFormat.renderRequest(canonical, upstreamModel: request.model)
        case .anthropic: try? AnthropicFormat.renderRequest(canonical, upstreamModel: request.model)
        }
        var bytes: [UInt8] = Array("switchyard-exact-v1\u{0}".utf8)
        for part in [tenant, promptVersion ?? "", request.sourceFormat.rawValue] {
            bytes.append(contentsOf: part.utf8)
            bytes.append(0)
        }
        // A request the renderer refuses (it would fail upstream anyway) still gets a key of its own.
        (body ?? .string("\(request)")).write(into: &bytes, sortedKeys: true)
        return KeyHash.sha256Hex(bytes: bytes)
    }
}

/// A stored answer.
public struct CachedAnswer: Sendable {
    /// The tenant it belongs to (also part of its key): for per-tenant invalidation.
    public var tenant: String
    /// The public model name it answered.
    public var model: String
    /// The answer as it came: when it arrived whole, the upstream's bytes (a same-format hit is served from them
    /// untouched, and they are decoded only when a hit needs another format or a stream) and the usage read from them.
    public var completion: Completion
    /// What the answer cost when it was made, at list prices: what each hit saves.
    public var cost: NanoUSD
    public var storedAt: ContinuousClock.Instant
    /// The end of its TTL: a hit only before it.
    public var expiresAt: ContinuousClock.Instant
    /// How long the store keeps it: past `expiresAt` only for a degradation policy's stale answers.
    public var retainedUntil: ContinuousClock.Instant

    public init(tenant: String, model: String, completion: Completion, cost: NanoUSD, storedAt: ContinuousClock.Instant,
                expiresAt: ContinuousClock.Instant, retainedUntil: ContinuousClock.Instant? = nil) {
        self.tenant = tenant
        self.model = model
        self.completion = completion
        self.completion.cost = nil
        self.completion.cache = nil
        // The limits of the request that made it are that caller's, not a later one's.
        self.completion.limits = nil
        self.cost = cost
        self.storedAt = storedAt
        self.expiresAt = expiresAt
        self.retainedUntil = max(retainedUntil ?? expiresAt, expiresAt)
    }

    public init(tenant: String, model: String, response: ChatResponse, raw: (format: APIFormat, body: ByteBuffer)?,
                cost: NanoUSD, storedAt: ContinuousClock.Instant, expiresAt: ContinuousClock.Instant,
                retainedUntil: ContinuousClock.Instant? = nil) {
        self.init(tenant: tenant, model: model, completion: Completion(response: response, raw: raw), cost: cost,
                  storedAt: storedAt, expiresAt: expiresAt, retainedUntil: retainedUntil)
    }

    /// The canonical answer (decoded from the stored bytes when only they were kept); `nil` if they do not decode.
    public var response: ChatResponse? { try? completion.canonicalResponse() }

    /// About how much memory the entry holds, for the store's byte bound.
    public var approximateBytes: Int {
        var bytes = 256 + (completion.raw?.body.readableBytes ?? 0)
        for choice in completion.response?.choices ?? [] {
            for block in choice.content {
                switch block {
                case .text(let text, _): bytes += text.utf8.count
                case .toolUse(let id, let name, let arguments): bytes += id.utf8.count + name.utf8.count + arguments.utf8.count
                default: bytes += 64
                }
            }
        }
        return bytes
    }
}

/// Where exact-cache answers live. The in-memory store is the embedded default; a shared store (Redis) lets every
/// gateway instance see the same answers.
public protocol ExactCacheStore: Sendable {
    /// The answer stored under `key` (which `tenant`'s request made), if any and still kept: possibly past its TTL
    /// (`expiresAt`) when it was stored with a longer `retainedUntil`, so the caller checks freshness.
    func lookup(_ key: String, tenant: String, now: ContinuousClock.Instant) async throws -> CachedAnswer?
    /// Stores `answer` without delaying anyone: a shared store writes in the background, a bounded number at a time.
    func put(_ key: String, _ answer: CachedAnswer)
    /// Removes every answer of `tenant`, or all answers when `tenant` is nil; returns how many went.
    func removeAll(tenant: String?) async throws -> Int
}

extension InMemoryExactCache {
    public func lookup(_ key: String, tenant: String, now: ContinuousClock.Instant) -> CachedAnswer? {
        get(key, now: now)
    }
}

/// An in-process LRU store bounded by entries and bytes; entries no longer kept are dropped when met.
public final class InMemoryExactCache: ExactCacheStore {
    private final class Node {
        let key: String
        var answer: CachedAnswer
        let bytes: Int
        var newer: Node?
        weak var older: Node?

        init(key: String, answer: CachedAnswer) {
            self.key = key
            self.answer = answer
            self.bytes = answer.approximateBytes + key.utf8.count
        }
    }

    private struct State {
        var nodes: [String: Node] = [:]
        /// Least recently used end (evicted first) and most recently used end.
        var oldest: Node?
        var newest: Node?
        var bytes = 0

        mutating func unlink(_ node: Node) {
            if let older = node.older { older.newer = node.newer } else { oldest = node.newer }
            if let newer = node.newer { newer.older = node.older } else { newest = node.older }
            node.newer = nil
            node.older = nil
        }

        mutating func pushNewest(_ node: Node) {
            node.older = newest
            node.newer = nil
            newest?.newer = node
            newest = node
            if oldest == nil { oldest = node }
        }

        mutating func remove(_ node: Node) {
            unlink(node)
            nodes[node.key] = nil
            bytes -= node.bytes
        }
    }

    public let maxEntries: Int
    public let maxBytes: Int
    // The nodes are reference types reached only under the lock.
    private let state: Locked<UncheckedBox<State>>

    public init(maxEntries: Int, maxBytes: Int) {
        self.maxEntries = max(1, maxEntries)
        self.maxBytes = max(1, maxBytes)
        self.state = Locked(UncheckedBox(State()))
    }

    public var count: Int { state.withLock { $0.value.nodes.count } }
    public var bytes: Int { state.withLock { $0.value.bytes } }

    public func get(_ key: String, now: ContinuousClock.Instant) -> CachedAnswer? {
        state.withLock { box -> CachedAnswer? in
            guard let node = box.value.nodes[key] else { return nil }
            guard node.answer.retainedUntil > now else {
                box.value.remove(node)
                return nil
            }
            box.value.unlink(node)
            box.value.pushNewest(node)
            return node.answer
        }
    }

    public func put(_ key: String, _ answer: CachedAnswer) {
        let node = Node(key: key, answer: answer)
        guard node.bytes <= maxBytes else { return }
        state.withLock { box in
            if let existing = box.value.nodes[key] { box.value.remove(existing) }
            box.value.nodes[key] = node
            box.value.pushNewest(node)
            box.value.bytes += node.bytes
            while box.value.nodes.count > maxEntries || box.value.bytes > maxBytes, let oldest = box.value.oldest {
                box.value.remove(oldest)
            }
        }
    }

    @discardableResult public func removeAll(tenant: String?) -> Int {
        state.withLock { box -> Int in
            let doomed = box.value.nodes.values.filter { tenant == nil || $0.answer.tenant == tenant }
            for node in doomed { box.value.remove(node) }
            return doomed.count
        }
    }
}

/// Holds a non-Sendable value that is only ever touched under a lock.
struct UncheckedBox<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// Builds a complete answer from a stream's chunks, for storing a streamed answer once it ended cleanly.
///
/// Linear in the answer's length: text and tool-argument fragments are kept as lists and joined once, in
/// `response()` (appending each fragment to the string so far copied it, quadratic in the number of chunks).
public struct AnswerAssembler: Sendable {
    fileprivate enum Block: Sendable {
        case text([String])
        case toolUse(id: String, name: String, arguments: [String])
    }

    private var id = ""
    private var model = ""
    private var usage = Usage()
    private var choices: [Int: (content: [Block], stop: StopReason?)] = [:]
    /// Tool calls by (choice, index): position of the block in its choice's content.
    private var toolBlocks: [Int: [Int: Int]] = [:]

    public init() {}

    public mutating func add(_ chunks: [ChatChunk]) {
        for chunk in chunks {
            switch chunk {
            case .start(let id, let model, let usage):
                self.id = id
                self.model = model
                if let usage { self.usage = usage }
            case .text(let choice, let text):
                // Mutated in place: the dictionary's storage is not copied per chunk.
                choices[choice, default: ([], nil)].content.appendText(text)
            case .toolCallStart(let choice, let index, let id, let name):
                toolBlocks[choice, default: [:]][index] = choices[choice]?.content.count ?? 0
                choices[choice, default: ([], nil)].content.append(.toolUse(id: id, name: name, arguments: []))
            case .toolCallArguments(let choice, let index, let fragment):
                guard let position = toolBlocks[choice]?[index], let count = choices[choice]?.content.count, position < count
                else { continue }
                choices[choice]?.content[position].appendArguments(fragment)
            case .finish(let choice, let reason):
                choices[choice, default: ([], nil)].stop = reason
            case .usage(let usage):
                self.usage = usage
            }
        }
    }

    /// The answer; `nil` if no choice finished (an answer without its end is not complete).
    public func response() -> ChatResponse? {
        guard !choices.isEmpty, choices.values.allSatisfy({ $0.stop != nil }) else { return nil }
        let ordered = choices.sorted { $0.key < $1.key }.map { index, entry in
            ChatChoice(index: index, content: entry.content.map { block -> ContentBlock in
                switch block {
                case .text(let fragments): .text(fragments.joined())
                case .toolUse(let id, let name, let arguments): .toolUse(id: id, name: name, arguments: arguments.joined())
                }
            }, stopReason: entry.stop)
        }
        return ChatResponse(id: id, model: model, choices: ordered, usage: usage)
    }
}

extension [AnswerAssembler.Block] {
    fileprivate mutating func appendText(_ text: String) {
        if case .text(var fragments)? = last {
            // Taken out first, so the array is uniquely referenced when it grows.
            self[count - 1] = .text([])
            fragments.append(text)
            self[count - 1] = .text(fragments)
        } else {
            append(.text([text]))
        }
    }
}

extension AnswerAssembler.Block {
    fileprivate mutating func appendArguments(_ fragment: String) {
        guard case .toolUse(let id, let name, var arguments) = self else { return }
        self = .text([])
        arguments.append(fragment)
        self = .toolUse(id: id, name: name, arguments: arguments)
    }
}

/// A stored answer as stream events, with the sequence a live stream has: start (with the input usage), the text
/// in small pieces, tool calls with their arguments in pieces, the finish of each choice, and the usage.
public enum AnswerReplay {
    /// Text pieces of about this many characters, cut after a space where there is one.
    static let pieceLength = 24

    public static func events(_ response: ChatResponse) -> [StreamEvent] {
        // Input usage at the start, as a live stream reports it; the whole usage at the end.
        var input = response.usage
        input.outputTokens = 0
        var events = [StreamEvent(chunks: [.start(id: response.id, model: response.model, usage: input)])]
        for choice in response.choices {
            var toolIndex = 0
            for block in choice.content {
                switch block {
                case .text(let text, _):
                    for piece in pieces(text) { events.append(StreamEvent(chunks: [.text(choice: choice.index, piece)])) }
                case .toolUse(let id, let name, let arguments):
                    events.append(StreamEvent(chunks: [.toolCallStart(choice: choice.index, index: toolIndex, id: id, name: name)]))
                    for piece in pieces(arguments) {
                        events.append(StreamEvent(chunks: [.toolCallArguments(choice: choice.index, index: toolIndex, piece)]))
                    }
                    toolIndex += 1
                default:
                    continue
                }
            }
            events.append(StreamEvent(chunks: [.finish(choice: choice.index, choice.stopReason ?? .endTurn)]))
        }
        events.append(StreamEvent(chunks: [.usage(response.usage)]))
        return events
    }

    static func pieces(_ text: String) -> [String] {
        var pieces: [String] = []
        var current = ""
        for character in text {
            current.append(character)
            if current.count >= pieceLength, character == " " {
                pieces.append(current)
                current = ""
            } else if current.count >= pieceLength * 2 {
                pieces.append(current)
                current = ""
            }
        }
        if !current.isEmpty || pieces.isEmpty { pieces.append(current) }
        return pieces
    }
}
