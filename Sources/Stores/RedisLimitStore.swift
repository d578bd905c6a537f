import Limits
import Redis
import SwitchyardCore
import Synchronization

/// Rate limits, quotas and concurrency permits in Redis, shared by every instance: one script checks every limit of
/// a request and reserves them all or none (one round trip), another settles. Times are microseconds in Redis (Lua
/// numbers are doubles: nanoseconds since 1970 would lose their last digits).
///
/// Keys are `<prefix>limit:{<shard hash>}:<counter hash>` (a quota's with `:q<period>`), expiring when they would
/// hold nothing a fresh counter would not. On a Cluster, the demands of one request are grouped by shard (one slot
/// each), reserved in a fixed order, and the groups already reserved are given back when a later one refuses, so no
/// limit is ever exceeded.
public final class RedisLimitStore: LimitStore {
    private let client: RedisClient
    private let prefix: String
    /// Settlements sent and not yet answered: bounded, past it one is dropped (its permits then expire by themselves).
    private let settling = Atomic<Int>(0)
    static let maximumSettling = 10_000
    private let onSettleFailure: @Sendable () -> Void

    public init(client: RedisClient, keyPrefix: String, onSettleFailure: @escaping @Sendable () -> Void = {}) {
        self.client = client
        prefix = keyPrefix
        self.onSettleFailure = onSettleFailure
    }

    /// The demands' keys, each shard hashed once (a request's counters of one tenant share theirs); a quota's names
    /// its period (`periods`: the one each was reserved in; default: now's).
    func keys(_ demands: [LimitDemand], now: Int64, periods: [Int64?] = []) -> [String] {
        var shards: [String: String] = [:]
        return demands.enumerated().map { offset, demand in
            let counter = KeyHash.sha256Hex(demand.counter, characters: 16)
            let name = demand.shard
            let shard: String
            if name.isEmpty {
                shard = counter
            } else if let known = shards[name] {
                shard = known
            } else {
                shard = KeyHash.sha256Hex(name, characters: 16)
                shards[name] = shard
            }
            if case .quota(_, let calendar) = demand.rule {
                let period = periods.indices.contains(offset) ? periods[offset] : nil
                return "\(prefix)limit:{\(shard)}:\(counter):q\(period ?? calendar.period(containing: now).index)"
            }
            return "\(prefix)limit:{\(shard)}:\(counter)"
        }
    }

    /// The reservation's keys: those it was reserved under, or derived again for one made elsewhere.
    private func keys(of reservation: Reservation, now: Int64) -> [String] {
        reservation.storeKeys.count == reservation.demands.count
            ? reservation.storeKeys : keys(reservation.demands, now: now, periods: reservation.periods)
    }

    static func microseconds(_ nanoseconds: Int64) -> Int64 { nanoseconds / 1000 }

    /// A script's microseconds as nanoseconds, never negative, saturating: the reply is the server's to choose.
    static func nanoseconds(_ microseconds: Int64) -> Int64 {
        let (value, overflow) = max(microseconds, 0).multipliedReportingOverflow(by: 1000)
        return overflow ? .max : value
    }

    /// Per demand: kind, limit, parameter (period or ttl in µs, or a quota period's end in µs), units.
    private func arguments(_ demands: [LimitDemand], units: [Int64], now: Int64) -> [RedisArgument] {
        var arguments: [RedisArgument] = []
        for (demand, count) in zip(demands, units) {
            switch demand.rule {
            case .rate(let limit, let period):
                arguments += ["r", .integer(max(limit, 1)), .integer(max(Self.microseconds(period), 1)), .integer(count)]
            case .quota(let limit, let calendar):
                arguments += ["q", .integer(max(limit, 0)), .integer(Self.microseconds(calendar.period(containing: now).end)), .integer(count)]
            case .concurrent(let limit, let ttl):
                arguments += ["c", .integer(max(limit, 0)), .integer(max(Self.microseconds(ttl), 1)), .integer(count)]
            }
        }
        return arguments
    }

    /// Demand indices per script: all of them on a single server; per shard (one slot), in a fixed order, on a Cluster.
    private func groups(_ demands: [LimitDemand]) -> [[Int]] {
        guard client.configuration.cluster else { return [Array(demands.indices)] }
        return Dictionary(grouping: demands.indices) { index in
            let shard = demands[index].shard
            return shard.isEmpty ? demands[index].counter : shard
        }
            .sorted { $0.key < $1.key }.map(\.value)
    }

    public func reserve(_ demands: [LimitDemand], lease: UInt64, now: Int64) async throws -> LimitDecision {
        guard !demands.isEmpty else {
            return .admitted(Reservation(demands: [], lease: lease, periods: [], remaining: [], resetIn: []))
        }
        let groups = groups(demands)
        let keys = keys(demands, now: now)
        var remaining = [Int64](repeating: 0, count: demands.count), resets = remaining
        var reserved: [[Int]] = []
        for group in groups {
            let part = group.map { demands[$0] }
            let reply = try await client.evaluate(Self.reserveScript, keys: group.map { .string(keys[$0]) },
                                                  arguments: [.integer(Self.microseconds(now)), .string(String(lease))]
                                                      + arguments(part, units: part.map(\.units), now: now))
            guard let values = reply.elements?.compactMap(\.integer), values.first == 1 || values.first == 0 else {
                throw RedisError.protocolViolation(.badValue)
            }
            if values[0] == 0, values.count == 5 {
                // Refused: give back what earlier groups took.
                for done in reserved {
                    let back = done.map { demands[$0] }
                    _ = try? await client.evaluate(Self.settleScript, keys: done.map { .string(keys[$0]) },
                                                   arguments: settleArguments(back, actual: back.map { _ in 0 }, lease: lease, now: now))
                }
                let index = group.indices.contains(Int(values[1])) ? group[Int(values[1])] : group[0]
                return .refused(index: index, retryIn: values[2] < 0 ? nil : Self.nanoseconds(values[2]), remaining: max(values[3], 0),
                                resetIn: Self.nanoseconds(values[4]))
            }
            guard values.count == 1 + 2 * part.count else { throw RedisError.protocolViolation(.badValue) }
            for (offset, index) in group.enumerated() {
                remaining[index] = max(values[1 + 2 * offset], 0)
                resets[index] = Self.nanoseconds(values[2 + 2 * offset])
            }
            reserved.append(group)
        }
        let periods: [Int64?] = demands.map { demand in
            if case .quota(_, let calendar) = demand.rule { return calendar.period(containing: now).index }
            return nil
        }
        return .admitted(Reservation(demands: demands, lease: lease, periods: periods, remaining: remaining, resetIn: resets,
                                     storeKeys: keys))
    }

    public func remaining(_ demands: [LimitDemand], now: Int64) async throws -> [Int64] {
        guard !demands.isEmpty else { return [] }
        let commands: [[RedisArgument]] = zip(demands, keys(demands, now: now)).map { demand, key in
            if case .concurrent = demand.rule {
                return ["ZCOUNT", .string(key), .string("(\(Self.microseconds(now))"), "+inf"]
            }
            return ["GET", .string(key)]
        }
        let replies = try await client.pipeline(commands)
        return zip(demands, replies).map { demand, reply in
            switch demand.rule {
            case .rate(let limit, let period):
                // The TAT in µs, as the script stores it; anything else is an unused counter.
                guard let text = reply.string, let micros = Double(text), micros.isFinite, micros >= 0, micros < 9e15 else {
                    return demand.rule.capacity
                }
                return GCRA(limit: limit, period: period, tat: Self.nanoseconds(Int64(micros))).remaining(now: now)
            case .quota(let limit, _):
                let used = reply.string.flatMap { Int64($0) } ?? 0
                return max(limit - max(used, 0), 0)
            case .concurrent(let limit, _):
                return max(Int64(limit) - max(reply.integer ?? 0, 0), 0)
            }
        }
    }

    /// One `ZADD XX` per permit (only a permit still held is extended), pipelined: each names one key, so a
    /// cluster sends each to its slot's node.
    public func renew(_ reservation: Reservation, now: Int64) async throws {
        let keys = keys(of: reservation, now: now)
        let permits = reservation.demands.indices.compactMap { index -> (key: RedisArgument, ttl: Int64)? in
            guard case .concurrent(_, let ttl) = reservation.demands[index].rule else { return nil }
            return (.string(keys[index]), ttl)
        }
        guard !permits.isEmpty else { return }
        let commands: [[RedisArgument]] = permits.map { permit in
            ["ZADD", permit.key, "XX", .integer(Self.microseconds(now) &+ Self.microseconds(permit.ttl)), .string(String(reservation.lease))]
        }
        let ttls: [[RedisArgument]] = permits.map { permit in ["PEXPIRE", permit.key, .integer(permit.ttl / 1_000_000 &+ 1000), "GT"] }
        _ = try await client.pipeline(commands + ttls)
    }

    public func settle(_ reservation: Reservation, actual: [Int64?], now: Int64) async throws {
        for script in settlements(reservation, actual: actual, now: now) {
            try await client.evaluate(Self.settleScript, keys: script.keys, arguments: script.arguments)
        }
    }

    /// Sent without a task waiting for each reply; bounded (`maximumSettling`), a failure counted.
    public func settleInBackground(_ reservation: Reservation, actual: [Int64?], now: Int64) {
        for script in settlements(reservation, actual: actual, now: now) {
            guard settling.add(1, ordering: .relaxed).newValue <= Self.maximumSettling else {
                settling.subtract(1, ordering: .relaxed)
                onSettleFailure()
                continue
            }
            client.evaluateDetached(Self.settleScript, keys: script.keys, arguments: script.arguments) { [self] result in
                settling.subtract(1, ordering: .relaxed)
                if case .failure = result { onSettleFailure() }
            }
        }
    }

    /// The scripts that settle `reservation`: one per shard group with something to change.
    private func settlements(_ reservation: Reservation, actual: [Int64?], now: Int64) -> [(keys: [RedisArgument], arguments: [RedisArgument])] {
        let demands = reservation.demands
        guard !demands.isEmpty else { return [] }
        let used = demands.indices.map { index in index < actual.count ? actual[index].map { max($0, 0) } ?? demands[index].units : demands[index].units }
        // Only what changes: a rate or quota that used what it reserved (a request counter, say) needs no write, and
        // a reservation with nothing else to settle needs no round trip.
        let changing = demands.indices.filter { index in demands[index].rule.isConcurrent || used[index] != demands[index].units }
        guard !changing.isEmpty else { return [] }
        // A quota settles in the period it was reserved in (its key names the period).
        let keys = keys(of: reservation, now: now)
        return groups(demands).map { $0.filter(changing.contains) }.filter { !$0.isEmpty }.map { group in
            (group.map { .string(keys[$0]) },
             settleArguments(group.map { demands[$0] }, actual: group.map { used[$0] }, lease: reservation.lease, now: now))
        }
    }

    private func settleArguments(_ demands: [LimitDemand], actual: [Int64], lease: UInt64, now: Int64) -> [RedisArgument] {
        let deltas = zip(demands, actual).map { demand, used in used - demand.units }
        return [.integer(Self.microseconds(now)), .string(String(lease))] + arguments(demands, units: deltas, now: now)
    }

    /// KEYS: one per demand. ARGV: now (µs), lease id, then per demand kind, limit, parameter, units.
    /// Returns {1, remaining, reset (µs), …} or {0, index (0-based), retry (µs, -1 never), remaining, reset (µs)}.
    static let reserveScript = RedisScript("""
        local now = tonumber(ARGV[1])
        local lease = ARGV[2]
        local n = #KEYS
        local tats, used, writes, result = {}, {}, {}, {1}
        for i = 1, n do
          local b = 2 + (i - 1) * 4
          local kind, limit, param, units = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
          local key = KEYS[i]
          if kind == 'r' then
            local interval = param / limit
            local tat = tats[key] or tonumber(redis.call('GET', key) or '0')
            local start = math.max(tat, now)
            local freeNow = math.floor(math.max(0, param - (start - now)) / interval + 1e-6)
            if units > limit then return {0, i - 1, -1, freeNow, math.max(tat - now, 0)} end
            local ahead = start + units * interval - now
            if ahead > param + 1e-6 then return {0, i - 1, math.ceil(ahead - param), freeNow, math.max(tat - now, 0)} end
            tats[key] = now + ahead
            writes[#writes + 1] = {'r', key, now + ahead, ahead}
            result[#result + 1] = math.floor((param - ahead) / interval + 1e-6)
            result[#result + 1] = math.ceil(ahead)
          elseif kind == 'q' then
            local current = used[key] or tonumber(redis.call('GET', key) or '0')
            local left = math.max(limit - current, 0)
            if units > limit then return {0, i - 1, -1, left, param - now} end
            if units > left then return {0, i - 1, param - now, left, param - now} end
            used[key] = current + units
            writes[#writes + 1] = {'q', key, units, param}
            result[#result + 1] = left - units
            result[#result + 1] = param - now
          else
            -- Live permits only (expired ones are swept by settlements); whether this lease holds one is asked only
            -- when the limit is reached (a lease is new per request, so it almost never does).
            local count = redis.call('ZCOUNT', key, '(' .. ARGV[1], '+inf')
            if count >= limit and tonumber(redis.call('ZSCORE', key, lease) or '0') <= now then
              local first = redis.call('ZRANGEBYSCORE', key, '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
              local retry = first[2] and math.max(tonumber(first[2]) - now, 0) or -1
              return {0, i - 1, retry, 0, math.max(retry, 0)}
            end
            writes[#writes + 1] = {'c', key, now + param, param, #result + 1, limit - count}
            result[#result + 1] = 0
            result[#result + 1] = 0
          end
        end
        for _, w in ipairs(writes) do
          if w[1] == 'r' then
            redis.call('SET', w[2], string.format('%.0f', w[3]), 'PX', math.ceil(w[4] / 1000) + 1000)
          elseif w[1] == 'q' then
            redis.call('INCRBY', w[2], w[3])
            redis.call('PEXPIREAT', w[2], math.ceil(w[4] / 1000) + 60000)
          else
            -- Left: the limit less the live permits, less this one unless it was already held.
            result[w[5]] = w[6] - redis.call('ZADD', w[2], w[3], lease)
            redis.call('PEXPIRE', w[2], math.ceil(w[4] / 1000) + 1000)
          end
        end
        return result
        """)

    /// KEYS and ARGV as for the reservation; units are the differences (actual − reserved). Gives back permits.
    static let settleScript = RedisScript("""
        local now = tonumber(ARGV[1])
        local lease = ARGV[2]
        for i = 1, #KEYS do
          local b = 2 + (i - 1) * 4
          local kind, limit, param, delta = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
          local key = KEYS[i]
          if kind == 'r' then
            local tat = tonumber(redis.call('GET', key) or '0')
            local interval = param / limit
            if delta > 0 then tat = math.max(tat, now) + delta * interval
            elseif delta < 0 then tat = math.max(now, tat + delta * interval) end
            if tat > now then
              redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
            else
              redis.call('DEL', key)
            end
          elseif kind == 'q' then
            if delta ~= 0 and redis.call('EXISTS', key) == 1 then
              local value = math.max(tonumber(redis.call('GET', key) or '0') + delta, 0)
              redis.call('SET', key, string.format('%.0f', value), 'KEEPTTL')
            end
          else
            redis.call('ZREM', key, lease)
            redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
          end
        end
        return 1
        """)
}
