import Caching
import NIOCore
import NIOPosix
import Redis
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
