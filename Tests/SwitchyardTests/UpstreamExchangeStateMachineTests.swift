import NIOCore
import NIOHTTP1
@testable import Providers
import Testing

/// The upstream exchange's state machine alone: no sockets, no sleeps, time passed in.
@Suite struct UpstreamExchangeStateMachineTests {
    typealias Machine = UpstreamExchangeStateMachine
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func machine(streaming: Bool = false, maximumBodyBytes: Int = 1 << 20) -> Machine {
        Machine(streaming: streaming, maximumBodyBytes: maximumBodyBytes, totalDeadline: t0 + .seconds(60),
                queueDeadline: t0 + .seconds(2), headDeadline: t0 + .seconds(10), idleTimeout: .seconds(5), now: t0)
    }

    static let ok = HTTPResponseHead(version: .http1_1, status: .ok)

    func failure(_ action: Machine.Action) -> UpstreamTransportError? {
        if case .fail(let error) = action.caller { return error }
        return nil
    }

    @Test func aWholeAnswerIsDeliveredOnceAndTheConnectionGoesBack() {
        var machine = Self.machine()
        #expect(machine.start().connection == .acquire)
        let assigned = machine.connectionAssigned(now: Self.t0)
        #expect(assigned.use && assigned.action.connection == .writeRequest)
        #expect(machine.head(Self.ok, now: Self.t0).caller == nil)
        _ = machine.body(ByteBuffer(string: "hel"), now: Self.t0)
        _ = machine.body(ByteBuffer(string: "lo"), now: Self.t0)
        let end = machine.end(keepAlive: true)
        #expect(end.connection == .answerEnded(keepAlive: true))
        guard case .succeedWhole(_, let body) = end.caller else {
            Issue.record("no answer")
            return
        }
        #expect(String(buffer: body) == "hello")
        // Nothing after the end reaches the caller again.
        #expect(machine.connectionLost().caller == nil)
        #expect(machine.tick(now: Self.t0 + .seconds(100)).caller == nil)
    }

    @Test func aCancellationBeforeTheStartStillEndsTheExchange() {
        var machine = Self.machine()
        #expect(machine.cancel().caller == nil)  // nobody waits yet
        #expect(failure(machine.start()) == .cancelled)
        // A connection opened for it meanwhile is given back.
        #expect(machine.connectionAssigned(now: Self.t0).use == false)
    }

    @Test func theQueueWaitHasItsOwnDeadline() {
        var machine = Self.machine()
        _ = machine.start()
        #expect(machine.tick(now: Self.t0 + .seconds(1)).caller == nil)
        let expired = machine.tick(now: Self.t0 + .seconds(2))
        #expect(failure(expired) == .poolTimeout)
        #expect(expired.connection == .leaveQueue)
    }

    @Test func theHeadDeadlineAndTheIdleGapAreEnforced() {
        var waiting = Self.machine()
        _ = waiting.start()
        _ = waiting.connectionAssigned(now: Self.t0)
        #expect(waiting.tick(now: Self.t0 + .seconds(9)).caller == nil)
        let late = waiting.tick(now: Self.t0 + .seconds(10))
        #expect(failure(late) == .headTimeout && late.connection == .close)

        var stalled = Self.machine()
        _ = stalled.start()
        _ = stalled.connectionAssigned(now: Self.t0)
        _ = stalled.head(Self.ok, now: Self.t0 + .seconds(1))
        _ = stalled.body(ByteBuffer(string: "{"), now: Self.t0 + .seconds(3))
        #expect(stalled.tick(now: Self.t0 + .seconds(7)).caller == nil)
        #expect(failure(stalled.tick(now: Self.t0 + .seconds(8))) == .idleTimeout)
    }

    @Test func anOversizedBodyFailsAndClosesTheConnection() {
        var machine = Self.machine(maximumBodyBytes: 4)
        _ = machine.start()
        _ = machine.connectionAssigned(now: Self.t0)
        _ = machine.head(Self.ok, now: Self.t0)
        let action = machine.body(ByteBuffer(string: "12345"), now: Self.t0)
        #expect(failure(action) == .responseTooLarge && action.connection == .close)
    }

    @Test func aStreamBuffersPausesAndDeliversPartsBeforeItsFailure() {
        var machine = Self.machine(streaming: true)
        _ = machine.start()
        _ = machine.connectionAssigned(now: Self.t0)
        guard case .succeedStreaming = machine.head(Self.ok, now: Self.t0).caller else {
            Issue.record("the head of a stream goes to the caller at once")
            return
        }
        var paused = false
        for index in 0..<Machine.highWater {
            let action = machine.body(ByteBuffer(string: "\(index)"), now: Self.t0)
            if action.connection == .pauseReading { paused = true }
        }
        #expect(paused && !machine.wantsMoreData)
        // Paused by the reader, the upstream's silence is not an idle gap.
        #expect(machine.tick(now: Self.t0 + .seconds(30)).caller == nil)
        #expect(machine.tick(now: Self.t0 + .seconds(30)).reader == nil)
        // The connection drops: the parts already received still come first, then the failure.
        #expect(machine.connectionLost().connection == .close)
        for index in 0..<Machine.highWater {
            guard case .deliver(let part?) = machine.readerNext(now: Self.t0).reader else {
                Issue.record("part \(index) was lost")
                return
            }
            #expect(String(buffer: part) == "\(index)")
        }
        guard case .fail(.connectionClosed) = machine.readerNext(now: Self.t0).reader else {
            Issue.record("the failure follows the parts")
            return
        }
    }

    @Test func aStreamEndsForAWaitingReaderAndReleasesItsConnection() {
        var machine = Self.machine(streaming: true)
        _ = machine.start()
        _ = machine.connectionAssigned(now: Self.t0)
        _ = machine.head(Self.ok, now: Self.t0)
        #expect(machine.readerNext(now: Self.t0).reader == nil)  // waits
        guard case .deliver(let part?) = machine.body(ByteBuffer(string: "a"), now: Self.t0).reader else {
            Issue.record("a waiting reader gets the part at once")
            return
        }
        #expect(String(buffer: part) == "a")
        _ = machine.readerNext(now: Self.t0)
        let end = machine.end(keepAlive: true)
        #expect(end.connection == .answerEnded(keepAlive: true))
        guard case .deliver(nil) = end.reader else {
            Issue.record("the waiting reader sees the end")
            return
        }
        #expect(!machine.needsWatching)
    }

    @Test func aNon200AnswerToAStreamIsCollectedWhole() {
        var machine = Self.machine(streaming: true)
        _ = machine.start()
        _ = machine.connectionAssigned(now: Self.t0)
        #expect(machine.head(HTTPResponseHead(version: .http1_1, status: .tooManyRequests), now: Self.t0).caller == nil)
        _ = machine.body(ByteBuffer(string: "{}"), now: Self.t0)
        guard case .succeedWhole(let head, _) = machine.end(keepAlive: false).caller else {
            Issue.record("no answer")
            return
        }
        #expect(head.status == .tooManyRequests)
    }

    @Test func aConnectionFoundDeadBeforeTheWriteIsReplacedNeverResent() {
        var machine = Self.machine()
        _ = machine.start()
        _ = machine.connectionAssigned(now: Self.t0)
        // Nothing was written: back to the queue.
        #expect(machine.connectionUnusable().connection == .acquire)
        _ = machine.connectionAssigned(now: Self.t0)
        _ = machine.head(Self.ok, now: Self.t0)
        // Lost after the request left: the call fails, it is not sent again.
        let lost = machine.connectionLost()
        #expect(failure(lost) == .connectionClosed && lost.connection == .close)
        #expect(machine.connectionUnusable().connection == nil)
    }
}

