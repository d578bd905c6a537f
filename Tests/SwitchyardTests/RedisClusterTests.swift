import Caching
import Embeddings
import Foundation
import NIOCore
import NIOPosix
@testable import Redis
import Server
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// A local Redis Cluster of three primaries (no replicas), formed with CLUSTER ADDSLOTSRANGE and CLUSTER MEET.
final class RedisClusterProcess: @unchecked Sendable {
    let servers: [RedisServerProcess]
    /// Node ids, in the order of `servers`.
    let ids: [String]
    let group = MultiThreadedEventLoopGroup.singleton

    init() async throws {
        var servers: [RedisServerProcess] = []
        var busPorts: [Int] = []
        for _ in 0..<3 {
            busPorts.append(try RedisServerProcess.freePort())
            // The bus port of its own: the default (port + 10,000) may be taken, or past 65,535.
            servers.append(try RedisServerProcess(arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                                              "--cluster-node-timeout", "2000",
                                                              "--cluster-port", String(busPorts[busPorts.count - 1])]))
        }
        self.servers = servers
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        var ids: [String] = []
        for (server, range) in zip(servers, ranges) {
            let connection = try await RedisConnection.connect(server.configuration(), on: group.next())
            try await connection.send(["CLUSTER", "ADDSLOTSRANGE", .integer(range.0), .integer(range.1)])
            ids.append(try await connection.send(["CLUSTER", "MYID"]).string ?? "")
            if server !== servers[0] {
                try await connection.send(["CLUSTER", "MEET", "127.0.0.1", .integer(servers[0].port), .integer(busPorts[0])])
            }
            await connection.close()
        }
        self.ids = ids
        // Formed when every node knows all three and says ok (bounded: 20 s).
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            var ready = true
            for server in servers {
                let connection = try await RedisConnection.connect(server.configuration(), on: group.next())
                let info = try await connection.send(["CLUSTER", "INFO"]).string ?? ""
                let slots = try await connection.send(["CLUSTER", "SLOTS"]).elements?.count ?? 0
                await connection.close()
                ready = ready && info.contains("cluster_state:ok") && slots == 3
            }
            if ready { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw RedisError.connectFailed("the cluster did not form")
    }

    func configuration(seed: Int = 0) -> RedisConfiguration {
        servers[seed].configuration { $0.cluster = true }
    }

    func node(_ index: Int) async throws -> RedisConnection {
        try await RedisConnection.connect(servers[index].configuration(), on: group.next())
    }
}

/// Slots, routing and redirects alone, as pure values.
@Suite struct RedisClusterRoutingTests {
    @Test func slotsFollowTheClusterSpecification() {
        // CRC16/XMODEM's check value, and slots quoted by the Redis Cluster specification and redis-cli.
        #expect(RedisSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        #expect(RedisSlot.of("foo") == 12182)
        #expect(RedisSlot.of("bar") == 5061)
        #expect(RedisSlot.of("hello") == 866)
        // Hash tags: the first {…} that is not empty.
        #expect(RedisSlot.of("{user1000}.following") == RedisSlot.of("{user1000}.followers"))
        #expect(RedisSlot.of("{user1000}.following") == RedisSlot.of("user1000"))
        #expect(RedisSlot.of("foo{}{bar}") == RedisSlot.of("foo{}{bar}".utf8))
        #expect(RedisSlot.of("foo{}{bar}") != RedisSlot.of("bar"))
        #expect(RedisSlot.of("foo{{bar}}zap") == RedisSlot.of("{bar"))
        #expect(RedisSlot.of("foo{bar}{zap}") == RedisSlot.of("bar"))
        #expect(RedisSlot.of("") == 0)
        #expect(RedisSlot.of("{") == RedisSlot.of("{".utf8) && RedisSlot.of("}{") == RedisSlot.of("}{".utf8))
    }

    @Test func commandsAreRoutedByTheirFirstKey() {
        #expect(RedisCommandKey.first(["GET", "k"]) == Array("k".utf8))
        #expect(RedisCommandKey.first(["set", .bytes([1, 2]), "v"]) == [1, 2])
        #expect(RedisCommandKey.first(["EVALSHA", "abc", "2", "{t}a", "{t}b", "x"]) == Array("{t}a".utf8))
        #expect(RedisCommandKey.first(["EVAL", "return 1", "0"]) == nil)
        #expect(RedisCommandKey.first(["EVAL", "return 1", "-1", "k"]) == nil)
        #expect(RedisCommandKey.first(["XREAD", "COUNT", "5", "BLOCK", "100", "STREAMS", "s", "0-0"]) == Array("s".utf8))
        #expect(RedisCommandKey.first(["XREADGROUP", "GROUP", "g", "c", "streams", "s", ">"]) == Array("s".utf8))
        #expect(RedisCommandKey.first(["XREAD", "STREAMS"]) == nil)
        #expect(RedisCommandKey.first(["PING"]) == nil && RedisCommandKey.first(["SCAN", "0"]) == nil)
        #expect(RedisCommandKey.first(["CLUSTER", "SLOTS"]) == nil && RedisCommandKey.first([]) == nil)
    }

    @Test func theSlotMapIsReadFromClusterSlotsAndRefusesWhatCannotBe() {
        let sender = RedisNode(host: "10.0.0.1", port: 7000)
        func range(_ start: Int64, _ end: Int64, _ host: String, _ port: Int64) -> RESPValue {
            .array([.integer(start), .integer(end), .array([.bulkString(Array(host.utf8)), .integer(port), .bulkString(Array("id".utf8))]),
                    .array([.bulkString(Array("10.0.0.9".utf8)), .integer(7009)])])
        }
        let reply = RESPValue.array([range(0, 5460, "10.0.0.1", 7000), range(5461, 10922, "", 7001), range(10923, 16383, "10.0.0.3", 7002)])
        guard let map = RedisSlotMap(clusterSlots: reply, sender: sender) else {
            Issue.record("a well-formed reply was refused")
            return
        }
        #expect(map.node(forSlot: 0) == sender && map.node(forSlot: 5460) == sender)
        // An empty host is the node that answered.
        #expect(map.node(forSlot: 5461) == RedisNode(host: "10.0.0.1", port: 7001))
        #expect(map.node(forSlot: 16383) == RedisNode(host: "10.0.0.3", port: 7002))
        #expect(map.node(forSlot: 16384) == nil && map.node(forSlot: -1) == nil)
        #expect(map.primaries.count == 3, "replicas are not primaries")
        var moved = map
        moved.move(slot: 12182, to: RedisNode(host: "10.0.0.4", port: 7003))
        #expect(moved.node(forSlot: 12182)?.port == 7003 && moved.node(forSlot: 12181)?.port == 7002 && moved.primaries.count == 4)
        // A partial map: the unserved slots have no node.
        let partial = RedisSlotMap(clusterSlots: .array([range(0, 99, "h", 1)]), sender: sender)
        #expect(partial?.node(forSlot: 99) != nil && partial?.node(forSlot: 100) == nil)
        // Hostile replies: out of range, reversed, bad port, not arrays, too many nodes.
        for bad: RESPValue in [
            .array([range(0, 16384, "h", 1)]), .array([range(10, 5, "h", 1)]), .array([range(-1, 5, "h", 1)]),
            .array([range(0, 5, "h", 0)]), .array([range(0, 5, "h", 70000)]), .array([.integer(1)]), .integer(3),
            .array([.array([.integer(0), .integer(1)])]),
            .array([range(0, 5, String(repeating: "h", count: 300), 1)]),
            .array((0..<1001).map { range(Int64($0), Int64($0), "h\($0)", 1) }),
        ] {
            #expect(RedisSlotMap(clusterSlots: bad, sender: sender) == nil, "\(String("\(bad)".prefix(80)))")
        }
    }

    @Test func redirectsAreParsedAndCheckedAndAnythingElseIsNot() {
        let sender = RedisNode(host: "10.0.0.1", port: 7000)
        #expect(RedisRedirect(RedisServerError("MOVED 3999 127.0.0.1:6381"), sender: sender)
                == RedisRedirect(kind: .moved, slot: 3999, node: RedisNode(host: "127.0.0.1", port: 6381)))
        #expect(RedisRedirect(RedisServerError("ASK 3999 :6381"), sender: sender)?.node == RedisNode(host: "10.0.0.1", port: 6381))
        #expect(RedisRedirect(RedisServerError("MOVED 1 [::1]:6381"), sender: sender)?.node == RedisNode(host: "::1", port: 6381))
        for bad in ["MOVED 16384 h:1", "MOVED -1 h:1", "MOVED 1 h:0", "MOVED 1 h", "MOVED 1", "ERR 1 h:1", "MOVED x h:1",
                    "MOVED 1 h:1 extra", "ASK 1 h:99999"] {
            #expect(RedisRedirect(RedisServerError(bad), sender: sender) == nil, "\(bad)")
        }
    }
}

/// The client against a local three-primary cluster: routing, pipelines split by node, scripts, SCAN on every
/// primary, and a slot migrated while the client runs (ASK during the migration, MOVED after it).
@Suite(.serialized) struct RedisClusterTests {
    @Test func commandsPipelinesScriptsAndScansGoToTheRightNodes() async throws {
        let cluster = try await RedisClusterProcess()
        let client = RedisClient(configuration: cluster.configuration(seed: 1), group: cluster.group)
        for index in 0..<300 {
            #expect(try await client.send(["SET", .string("key:\(index)"), .integer(index)]) == .simpleString("OK"))
        }
        for index in stride(from: 0, to: 300, by: 7) {
            #expect(try await client.send(["GET", .string("key:\(index)")]).string == String(index))
        }
        // Every node holds some of them (without routing, two of three would answer MOVED).
        for index in 0..<3 {
            let node = try await cluster.node(index)
            let size = try await node.send(["DBSIZE"]).integer ?? 0
            #expect(size > 50, "node \(index) holds \(size) keys")
            await node.close()
        }
        // One pipeline over all three nodes, answered in the order written.
        let replies = try await client.pipeline((0..<300).map { ["INCR", .string("key:\($0)")] })
        #expect(replies == (0..<300).map { .integer(Int64($0 + 1)) })
        // A script over keys of one slot (one hash tag), loaded where it runs.
        let script = RedisScript("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[1])")
        for tag in ["a", "b", "c", "d"] {
            #expect(try await client.evaluate(script, keys: [.string("{\(tag)}x"), .string("{\(tag)}n")], arguments: ["3"]) == .integer(3))
        }
        // Keys in different slots in one script: refused by the server, reported, no crash.
        await #expect(throws: RedisError.self) {
            try await client.evaluate(script, keys: ["{a}x", "{b}n"], arguments: ["1"])
        }
        // SCAN finds the keys on every primary.
        var found = 0
        try await client.scan(matching: "key:*", batch: 50) { names throws(RedisError) in found += names.count }
        #expect(found == 300)
        // A connection of its own to a key's node (the replication's blocking read).
        let configuration = try await client.configuration(forKey: "foo")
        #expect(configuration.port == cluster.servers[2].port, "slot 12182 is the third node's")
        await client.close()
    }

    @Test func aSlotMigratedWhileTheClientRunsIsFollowedThroughAskAndMoved() async throws {
        let cluster = try await RedisClusterProcess()
        let client = RedisClient(configuration: cluster.configuration(), group: cluster.group)
        // Both keys live in slot 12182 (tag "foo"), on the third node; the client learns the map.
        try await client.send(["SET", "{foo}a", "1"])
        try await client.send(["SET", "{foo}b", "2"])
        let source = try await cluster.node(2), target = try await cluster.node(0), other = try await cluster.node(1)
        defer { Task { await source.close(); await target.close(); await other.close() } }
        try await target.send(["CLUSTER", "SETSLOT", "12182", "IMPORTING", .string(cluster.ids[2])])
        try await source.send(["CLUSTER", "SETSLOT", "12182", "MIGRATING", .string(cluster.ids[0])])
        try await source.send(["MIGRATE", "127.0.0.1", .integer(cluster.servers[0].port), "{foo}a", "0", "5000"])
        // Mid-migration: {foo}a is on the target (the source answers ASK), {foo}b still on the source.
        #expect(try await client.send(["GET", "{foo}a"]).string == "1")
        #expect(try await client.send(["GET", "{foo}b"]).string == "2")
        #expect(try await client.pipeline([["GET", "{foo}a"], ["GET", "{foo}b"]]).map(\.string) == ["1", "2"])
        #expect(client.redirects.ask == 2 && client.redirects.moved == 0, "\(client.redirects)")
        // The migration ends: every node is told the slot's new owner.
        try await source.send(["MIGRATE", "127.0.0.1", .integer(cluster.servers[0].port), "{foo}b", "0", "5000"])
        for node in [target, source, other] {
            try await node.send(["CLUSTER", "SETSLOT", "12182", "NODE", .string(cluster.ids[0])])
        }
        // The client's map is stale: the source answers MOVED, followed.
        #expect(try await client.send(["GET", "{foo}b"]).string == "2")
        #expect(try await client.send(["INCR", "{foo}a"]) == .integer(2))
        #expect(client.redirects.moved >= 1 && client.redirects.ask == 2, "\(client.redirects)")
        #expect(try await client.configuration(forKey: "{foo}b").port == cluster.servers[0].port)
        await client.close()
    }

    @Test func gatewaysShareTheirCachesThroughACluster() async throws {
        let cluster = try await RedisClusterProcess()
        var shared = SharedStateTests.config(redisPort: cluster.servers[1].port)
        shared.state.cluster = true
        let config = shared
        let environment = ["SWITCHYARD_ADMIN_KEY": "admin-secret"]
        let embeddings = EmbeddingsSetting.model(directory: ModelStore().modelDirectory)
        try await withTestGateway(config, environment: environment, embeddings: embeddings) { gatewayA, a in
            try await withTestGateway(config, environment: environment, embeddings: embeddings) { gatewayB, b in
                #expect(try await send("\(a)/readyz", method: "GET", contentType: nil).status == 200)
                // Three tenants' answers (in three slots, most likely on different nodes), each a hit through B.
                for key in ["tenant-one", "tenant-two", "tenant-three"] {
                    let auth = [("authorization", "Bearer \(key)")]
                    #expect(try await send("\(a)/v1/chat/completions", body: SharedStateTests.body, headers: auth)
                        .header("x-switchyard-cache") == "miss")
                    var hit = false
                    for _ in 0..<50 where !hit {
                        hit = try await send("\(b)/v1/chat/completions", body: SharedStateTests.body, headers: auth)
                            .header("x-switchyard-cache") == "hit-exact"
                        if !hit { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    #expect(hit, "\(key)")
                }
                // The semantic entries reached B through the stream, wherever its slot lives.
                var replicated = false
                for _ in 0..<100 where !replicated {
                    replicated = gatewayB.semanticCache.count >= 3
                    if !replicated { try await Task.sleep(for: .milliseconds(20)) }
                }
                let inspector = RedisClient(configuration: cluster.configuration(), group: cluster.group)
                let lengths = try await inspector.send(["XLEN", "test:semantic:log"])
                await inspector.close()
                #expect(replicated, "B's semantic index holds \(gatewayB.semanticCache.count), A's \(gatewayA.semanticCache.count); stream \(lengths)")
                // Cleared through A: SCAN on every primary, gone for all three tenants.
                let cleared = try await send("\(a)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer admin-secret")],
                                             contentType: nil)
                let deleted = cleared.body.components(separatedBy: #""deleted":"#).last.flatMap { Int($0.prefix { $0.isNumber }) }
                #expect(cleared.status == 200 && (deleted ?? 0) >= 3, "\(cleared.body)")
                for key in ["tenant-one", "tenant-two", "tenant-three"] {
                    #expect(try await send("\(b)/v1/chat/completions", body: SharedStateTests.body, headers: [("authorization", "Bearer \(key)")])
                        .header("x-switchyard-cache") != "hit-exact")
                }
            }
        }
    }
}
