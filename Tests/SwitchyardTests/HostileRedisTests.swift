import Caching
import Foundation
import NIOCore
import NIOPosix
@testable import Redis
@testable import Stores
import SwitchyardCore
import SwitchyardModels
import Testing

/// A server that speaks Redis badly, or not at all: every call ends within its timeouts, with an error.
final class HostileRedisServer: @unchecked Sendable {
    enum Behaviour: Sendable {
        /// Accepts and never answers.
        case silent
        /// Answers the handshake, then sends a reply nobody asked for.
        case unsolicited
        /// Announces a bulk string far past the client's bound.
        case hugeBulk
        /// Answers the handshake, then every command with bytes that are not RESP.
        case garbage
        /// A cluster node that owns every slot and redirects every command to itself (MOVED, or ASK).
        case redirectsForever(ask: Bool)
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let behaviour: Behaviour
        var reads = 0

        init(_ behaviour: Behaviour) { self.behaviour = behaviour }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            reads += 1
            let reply: String
            switch behaviour {
            case .silent: return
            case .unsolicited: reply = "%0\r\n+surprise\r\n"
            case .hugeBulk: reply = "$999999999999\r\n"
            case .garbage: reply = reads == 1 ? "%0\r\n" : "\u{1}\u{2}not resp\r\n"
            case .redirectsForever(let ask):
                let port = context.channel.localAddress?.port ?? 0
                // One reply per command of the read (a pipeline may bring several): each command is `*N` then its
                // arguments as bulk strings, so its name is the line after its first `$` line.
                let lines = String(buffer: unwrapInboundIn(data)).components(separatedBy: "\r\n")
                let names = lines.indices.filter { lines[$0].hasPrefix("*") && $0 + 2 < lines.count }.map { lines[$0 + 2].uppercased() }
                reply = names.map { name in
                    switch name {
                    case "HELLO": "%0\r\n"
                    case "CLUSTER": "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:\(port)\r\n"
                    case "ASKING": "+OK\r\n"
                    default: "-\(ask ? "ASK" : "MOVED") 12182 127.0.0.1:\(port)\r\n"
                    }
                }.joined()
            }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)), promise: nil)
        }
    }

    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    init(_ behaviour: Behaviour) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(behaviour)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async { try? await channel.close() }
}

@Suite struct HostileRedisTests {
    @Test(arguments: [HostileRedisServer.Behaviour.silent, .unsolicited, .hugeBulk, .garbage])
    func aServerThatMisbehavesFailsTheCallInTime(_ behaviour: HostileRedisServer.Behaviour) async throws {
        let server = try await HostileRedisServer(behaviour)
        let client = RedisClient(configuration: RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300),
                                                                   commandTimeout: .milliseconds(300), poolSize: 1),
                                 group: MultiThreadedEventLoopGroup.singleton)
        let started = ContinuousClock.now
        for _ in 0..<3 {
            await #expect(throws: RedisError.self, "\(behaviour)") { try await client.send(["GET", "k"]) }
        }
        #expect(ContinuousClock.now - started < .seconds(3), "\(behaviour): no call waited past its timeouts")
        await client.close()
        await server.close()
    }

    @Test(arguments: [false, true])
    func aClusterNodeThatRedirectsForeverEndsTheCallAfterBoundedRedirects(ask: Bool) async throws {
        let server = try await HostileRedisServer(.redirectsForever(ask: ask))
        let client = RedisClient(configuration: RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300),
                                                                   commandTimeout: .milliseconds(300), poolSize: 1, cluster: true),
                                 group: MultiThreadedEventLoopGroup.singleton)
        let started = ContinuousClock.now
        do {
            try await client.send(["GET", "k"])
            Issue.record("a redirect loop answered")
        } catch {
            #expect(error.code == "server_error", "\(error)")
        }
        let pipelined = try await client.pipeline([["GET", "a"], ["GET", "b"]])
        #expect(pipelined.allSatisfy { if case .error = $0 { true } else { false } })
        let followed = client.redirects
        #expect((ask ? followed.ask : followed.moved) == 3 * RedisClient.maximumRedirects + 3, "\(followed)")
        #expect(ContinuousClock.now - started < .seconds(3))
        await client.close()
        await server.close()
    }

    @Test func replicationRecordsFromOutsideAreCheckedBeforeTheyReachTheIndex() {
        let local = InMemorySemanticCache(maxEntries: 100, maxBytes: 1 << 20, annThreshold: 1000)
        let client = RedisClient(configuration: RedisConfiguration(port: 1), group: MultiThreadedEventLoopGroup.singleton)
        let cache = ReplicatedSemanticCache(local: local, client: client, keyPrefix: "x:", maximumLength: 1000, dimensions: 3)
        let now = ContinuousClock.now
        let answer = CachedAnswer(tenant: "t", model: "m",
                                  response: ChatResponse(id: "x", model: "m", choices: [ChatChoice(content: [.text("hi")], stopReason: .endTurn)],
                                                         usage: Usage()),
                                  raw: nil, cost: .zero, storedAt: now, expiresAt: now + .seconds(60))
        func record(_ vector: [Float], id: String = "sc_1") -> [String: RESPValue] {
            let entry = SemanticEntry(id: id, namespace: "ns", text: "q", vector: vector, answer: answer)
            return ["origin": .bulkString(Array("other".utf8)), "op": .bulkString(Array("insert".utf8)),
                    "data": .bulkString(SemanticEntryCoding.encode(entry, now: now, wallNow: SharedState.wallNow())),
                    "ms": .bulkString(Array("not a number".utf8))]
        }
        // A vector of another size, bytes that are not an entry, a missing or unknown op: nothing reaches the index.
        cache.apply(record([1, 0, 0, 0]))
        cache.apply(["origin": .bulkString(Array("other".utf8)), "op": .bulkString(Array("insert".utf8)), "data": .bulkString([1, 2, 3])])
        cache.apply(["origin": .bulkString(Array("other".utf8))])
        cache.apply(["origin": .bulkString(Array("other".utf8)), "op": .bulkString(Array("explode".utf8))])
        #expect(local.count == 0)
        // A good one arrives, twice (a replay): one entry; a bad timestamp only loses its lag sample.
        cache.apply(record([1, 0, 0]))
        cache.apply(record([1, 0, 0]))
        #expect(local.count == 1 && cache.replication.applied == 2 && cache.replication.lagMilliseconds.isEmpty)
        // This instance's own records were applied when made.
        var own = record([0, 1, 0], id: "sc_2")
        own["origin"] = .bulkString(Array(cache.origin.utf8))
        cache.apply(own)
        #expect(local.count == 1)
        cache.apply(["origin": .bulkString(Array("other".utf8)), "op": .bulkString(Array("clear".utf8)),
                     "tenant": .bulkString(Array("t".utf8))])
        #expect(local.count == 0)
    }
}
