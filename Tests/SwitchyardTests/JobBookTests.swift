import Admission
import Foundation
import NIOCore
import NIOPosix
import Redis
import Stores
import SwitchyardCore
import SwitchyardModels
import Testing

/// The jobs' stores, pure (the in-memory book) and through a real redis-server: the same contract — P0 first and
/// oldest first, bounded, cancelled jobs never run, an outcome stored once — and, in Redis, a claim whose worker
/// stopped renewing is taken over.
@Suite struct JobBookTests {
    static func job(_ tenant: String = "t", _ priority: Priority = .p2, at time: Int64 = 1_000_000_000, deadline: Int64 = .max)
        -> JobRecord
    {
        JobRecord(id: JobRecord.makeID(), caller: Caller(tenant: tenant, user: "u", keyID: "k"), priority: priority, format: .openAI,
                  request: ["model": "gpt-4o-mini", "messages": .array([])], model: "gpt-4o-mini", createdAt: time, deadline: deadline)
    }

    static let done = JobRecord.Outcome.completed(result: ["ok": true], cost: NanoUSD(7), model: "gpt-4o-mini")

    @Test func jobsRunP0FirstThenOldestFirst() throws {
        var book = JobBook(settings: JobSettings())
        let old = Self.job("a", .p2, at: 1), young = Self.job("b", .p2, at: 2), urgent = Self.job("c", .p0, at: 3),
            middle = Self.job("d", .p1, at: 4)
        let ahead = [try book.submit(old, now: 1), try book.submit(young, now: 2), try book.submit(urgent, now: 3),
                     try book.submit(middle, now: 4)]
        // The P0 job goes ahead of both P2 jobs, and the P1 between.
        #expect(ahead == [0, 1, 0, 1])
        #expect(book.position(young.id) == 3 && book.position(old.id) == 2 && book.position(urgent.id) == 0)
        var order: [String] = []
        while let claim = book.claim(worker: "w", now: 5) { order.append(claim.job.id) }
        #expect(order == [urgent.id, middle.id, old.id, young.id])
        #expect(book.job(urgent.id)?.status == .running && book.job(urgent.id)?.attempts == 1)
        #expect(book.position(urgent.id) == nil)
    }

    @Test func waitingJobsAreBoundedInAllAndPerTenant() throws {
        var settings = JobSettings()
        settings.maxQueued = 3
        settings.maxQueuedPerTenant = 2
        var book = JobBook(settings: settings)
        _ = try book.submit(Self.job("a"), now: 1)
        _ = try book.submit(Self.job("a"), now: 1)
        #expect(throws: JobRefusal.tenantFull) { try book.submit(Self.job("a"), now: 1) }
        _ = try book.submit(Self.job("b"), now: 1)
        #expect(throws: JobRefusal.full) { try book.submit(Self.job("c"), now: 1) }
        // A job taken off the queue makes room, for its tenant too.
        _ = book.claim(worker: "w", now: 2)
        _ = try book.submit(Self.job("a"), now: 2)
        #expect(book.waiting == 3)
    }

    @Test func aCancelledJobNeverRunsAndAnOutcomeIsStoredOnce() throws {
        var book = JobBook(settings: JobSettings())
        let first = Self.job(), second = Self.job()
        _ = try book.submit(first, now: 1)
        _ = try book.submit(second, now: 1)
        let cancelled = book.cancel(first.id, now: 2)
        #expect(cancelled?.status == .cancelled)
        #expect(book.position(second.id) == 0)
        let claimed = book.claim(worker: "w", now: 3)
        let claim = try #require(claimed)
        #expect(claim.job.id == second.id)
        let stored = book.finish(claim, Self.done, now: 4)
        #expect(stored?.status == .completed)
        // Once: a second outcome (a late worker) changes nothing.
        let again = book.finish(claim, .failed(status: 500, error: [:]), now: 5)
        #expect(again == nil)
        #expect(book.job(second.id)?.status == .completed && book.job(second.id)?.cost == NanoUSD(7))
        // Cancelling an ended job leaves it as it ended.
        let late = book.cancel(second.id, now: 6)
        #expect(late?.status == .completed)
        // A running job cancelled: its worker loses the claim, and its outcome is not stored.
        let third = Self.job()
        _ = try book.submit(third, now: 7)
        let runningClaim = book.claim(worker: "w", now: 7)
        let running = try #require(runningClaim)
        let stopped = book.cancel(third.id, now: 8)
        #expect(stopped?.status == .cancelled)
        #expect(!book.holds(running))
        let refused = book.finish(running, Self.done, now: 9)
        #expect(refused == nil)
        #expect(book.job(third.id)?.status == .cancelled)
    }

    @Test func finishedJobsAreKeptForTheirRetentionAndUpToACount() throws {
        var settings = JobSettings()
        settings.retention = .seconds(10)
        settings.maxRetained = 2
        var book = JobBook(settings: settings)
        var ids: [String] = []
        for index in 0..<3 {
            let job = Self.job(at: Int64(index))
            ids.append(job.id)
            _ = try book.submit(job, now: Int64(index))
            _ = book.cancel(job.id, now: Int64(index))
        }
        // The oldest of three went (two are kept).
        #expect(book.job(ids[0]) == nil && book.job(ids[1]) != nil && book.job(ids[2]) != nil)
        // Past the retention, the rest go too.
        let none = book.claim(worker: "w", now: 11_000_000_000)
        #expect(none == nil)
        #expect(book.job(ids[1]) == nil && book.job(ids[2]) == nil && book.retained == 0)
    }

    @Test func aStoredRecordReadsBackAndGarbageDoesNot() throws {
        var job = Self.job("tenant-x", .p1, at: 42, deadline: 99)
        job.webhook = "https://example.com/hook"
        job = job.finished(Self.done, now: 50)
        #expect(JobRecord(stored: job.stored) == job)
        #expect(JobRecord(stored: ["id": "x"]) == nil)
        var tampered = job.stored.objectValue ?? [:]
        tampered["priority"] = "p9"
        #expect(JobRecord(stored: .object(tampered)) == nil)
        #expect(JobRecord.isValidID(Substring(JobRecord.makeID())))
        #expect(!JobRecord.isValidID("job_../../etc") && !JobRecord.isValidID("job_" + String(repeating: "G", count: 32)))
    }

    @Test func aWebhookSignatureCoversTheBodyAndTheTime() {
        let secret = Array("whsec-test".utf8), body = Array(#"{"id":"job_1"}"#.utf8)
        let header = WebhookSignature.header(secret: secret, timestamp: 1_000, body: body)
        #expect(WebhookSignature.verify(header, secret: secret, body: body, now: 1_100))
        #expect(!WebhookSignature.verify(header, secret: Array("other".utf8), body: body, now: 1_100))
        #expect(!WebhookSignature.verify(header, secret: secret, body: Array(#"{"id":"job_2"}"#.utf8), now: 1_100))
        // Replayed later than the tolerance.
        #expect(!WebhookSignature.verify(header, secret: secret, body: body, now: 2_000))
        #expect(!WebhookSignature.verify("t=1000,v1=00", secret: secret, body: body, now: 1_000))
    }

    // MARK: Redis

    static func redisStore(_ server: RedisServerProcess, settings: JobSettings = JobSettings()) -> RedisJobStore {
        let client = RedisClient(configuration: RedisConfiguration(host: "127.0.0.1", port: server.port, connectTimeout: .seconds(1),
                                                                   commandTimeout: .seconds(1)),
                                 group: MultiThreadedEventLoopGroup.singleton)
        return RedisJobStore(client: client, keyPrefix: "test:", settings: settings)
    }

    @Test func theRedisStoreKeepsTheSameOrderBoundsAndOutcomes() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        var settings = JobSettings()
        settings.maxQueuedPerTenant = 3
        let store = Self.redisStore(server, settings: settings)
        let old = Self.job("a", .p2, at: 1_000_000), young = Self.job("a", .p2, at: 2_000_000), urgent = Self.job("b", .p0, at: 3_000_000)
        #expect(try await store.submit(old) == 0)
        #expect(try await store.submit(young) == 1)
        #expect(try await store.submit(urgent) == 0)
        #expect(try await store.position(young.id) == 2)
        _ = try await store.submit(Self.job("a"))
        await #expect(throws: JobRefusal.tenantFull) { try await store.submit(Self.job("a")) }
        #expect(try await store.cancel(old.id, now: 5)?.status == .cancelled)
        let first = try #require(try await store.claim(worker: "w1", now: 10))
        #expect(first.job.id == urgent.id && first.job.status == .running && first.job.attempts == 1)
        let second = try #require(try await store.claim(worker: "w1", now: 10))
        // The cancelled job was passed over.
        #expect(second.job.id == young.id)
        #expect(try await store.finish(first, Self.done, now: 20)?.status == .completed)
        #expect(try await store.finish(first, Self.done, now: 21) == nil)
        let read = try #require(try await store.job(urgent.id))
        #expect(read.status == .completed && read.cost == NanoUSD(7) && read.result == ["ok": true] && read.finishedAt == 20)
        // Cancelled while running: the worker's renewal says so, and its outcome is refused.
        #expect(try await store.cancel(young.id, now: 30)?.status == .cancelled)
        #expect(try await store.renew(second, now: 31) == false)
        #expect(try await store.finish(second, Self.done, now: 32) == nil)
        #expect(try await store.job(young.id)?.status == .cancelled)
        #expect(try await store.job(JobRecord.makeID()) == nil)
    }

    @Test func aClaimNotRenewedIsTakenOverAndTheOutcomeStoredOnce() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        var settings = JobSettings()
        settings.visibilityTimeout = .milliseconds(300)
        let store = Self.redisStore(server, settings: settings)
        let job = Self.job()
        _ = try await store.submit(job)
        let dead = try #require(try await store.claim(worker: "dead", now: 1))
        // Renewed, the claim holds past the visibility timeout.
        for _ in 0..<3 {
            try await Task.sleep(for: .milliseconds(150))
            #expect(try await store.renew(dead, now: 2))
            #expect(try await store.claim(worker: "other", now: 2) == nil)
        }
        // Not renewed any more (its instance died): taken over after the timeout.
        try await Task.sleep(for: .milliseconds(400))
        let taken = try #require(try await store.claim(worker: "other", now: 3))
        #expect(taken.job.id == job.id && taken.job.attempts == 2)
        #expect(try await store.renew(dead, now: 4) == false)
        #expect(try await store.finish(dead, Self.done, now: 5) == nil)
        #expect(try await store.finish(taken, .failed(status: 504, error: ["error": "x"]), now: 6)?.status == .failed)
        #expect(try await store.job(job.id)?.errorStatus == 504)
        // Nothing left to claim, even after another timeout.
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await store.claim(worker: "third", now: 7) == nil)
    }
}
