#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell
%%
%% Smoke test of the Snakeport worker from a real Erlang VM: opens `python -m snakeport`
%% as a Port exactly as the harness does and checks the replies with pattern matches.
%%
%% Usage: escript smoke.escript PYTHON [PYTHONPATH]
%% Prints one line per step and "SMOKE OK"; exits 1 on the first mismatch.

main([Python]) -> main([Python, ""]);
main([Python, PyPath]) ->
    try run(Python, PyPath) of
        ok ->
            io:format("SMOKE OK~n"),
            halt(0)
    catch
        Class:Reason:Stack ->
            io:format("SMOKE FAILED: ~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end;
main(_) ->
    io:format("usage: escript smoke.escript PYTHON [PYTHONPATH]~n"),
    halt(2).

run(Python, PyPath) ->
    Env = case PyPath of "" -> []; _ -> [{env, [{"PYTHONPATH", PyPath}]}] end,
    Port = open_port({spawn_executable, Python},
                     [{packet, 4}, binary, exit_status, use_stdio,
                      {args, ["-m", "snakeport"]} | Env]),
    {snakeport_ready, 1, #{pid := OsPid, max_frame_bytes := MaxFrame, threads := 1}} = recv(Port),
    step("ready", {OsPid, MaxFrame}),

    %% Sessions exist only once opened: a call naming another session creates nothing.
    #{reason := session_not_found, details := #{session := <<"s">>}} =
        err(Port, {call, 20, <<"s">>, <<"operator">>, <<"add">>, [1, 2], #{}, #{}}),
    step("unopened session", session_not_found),

    #{session := <<"s">>, refs := 0, overflow := error} =
        ok(Port, {open_session, 1, <<"s">>, #{tags => [smoke]}}),
    #{session := <<"other">>} = ok(Port, {open_session, 21, <<"other">>, #{}}),
    step("open_session", ok),

    3 = ok(Port, {call, 2, <<"s">>, <<"operator">>, <<"add">>, [1, 2], #{}, #{}}),
    step("call operator.add", 3),

    Ref = {'$snakeport_ref', <<"s">>, RefId, <<"collections.Counter">>} =
        ok(Port, {call, 3, <<"s">>, <<"collections">>, <<"Counter">>, [<<"abca">>], #{}, #{}}),
    true = is_integer(RefId) andalso RefId > 0,
    step("call collections.Counter", Ref),

    [{<<"a">>, 2}] = ok(Port, {method, 4, <<"s">>, Ref, <<"most_common">>, [1], #{}, #{}}),
    step("method most_common", ok),

    1 = ok(Port, {method, 5, <<"s">>, Ref, <<"get">>, [<<"c">>, 0], #{}, #{}}),
    step("method get with a default", ok),

    #{reason := session_mismatch} =
        err(Port, {method, 6, <<"other">>, Ref, <<"total">>, [], #{}, #{}}),
    step("foreign session", session_mismatch),

    #{released := true} = ok(Port, {release_ref, 7, <<"s">>, Ref}),
    #{released := false} = ok(Port, {release_ref, 8, <<"s">>, Ref}),
    step("release_ref", ok),

    #{reason := ref_released, details := #{cause := released}} =
        err(Port, {method, 9, <<"s">>, Ref, <<"total">>, [], #{}, #{}}),
    step("released ref", ref_released),

    #{reason := python_error, type := <<"builtins.ValueError">>, traceback := [_ | _]} =
        err(Port, {call, 10, <<"s">>, <<"math">>, <<"sqrt">>, [-1], #{}, #{}}),
    step("python error", ok),

    Bin = crypto_free_random(1 bsl 20),
    Bin = ok(Port, {call, 11, <<"s">>, <<"copy">>, <<"copy">>, [{'$snakeport_bytes', Bin}], #{}, #{}}),
    step("1 MiB binary round trip", byte_size(Bin)),

    %% A call that crosses release_session fails and does not bring the session back.
    #{released := 0} = ok(Port, {release_session, 22, <<"other">>}),
    #{reason := session_not_found, details := #{cause := session_released}} =
        err(Port, {call, 23, <<"other">>, <<"operator">>, <<"add">>, [1, 2], #{}, #{}}),
    step("released session", session_not_found),

    pong = ok(Port, {ping, 12}),
    #{sessions := 1, refs := 0, pid := OsPid} = ok(Port, {stats, 13}),
    step("ping and stats", ok),

    ok = ok(Port, {shutdown, 14}),
    receive
        {Port, {exit_status, 0}} -> step("shutdown", exit_status_0)
    after 10000 -> throw(no_exit_status)
    end,
    ok.

%% A deterministic pseudo-random binary (no crypto application needed).
crypto_free_random(N) ->
    rand:seed(exsss, {1, 2, 3}),
    << <<(rand:uniform(256) - 1)>> || _ <- lists:seq(1, N) >>.

ok(Port, Request) ->
    Id = element(2, Request),
    port_command(Port, term_to_binary(Request)),
    case recv_reply(Port, Id) of
        {reply, Id, ok, Value} -> Value;
        Other -> throw({unexpected_reply, Request, Other})
    end.

err(Port, Request) ->
    Id = element(2, Request),
    port_command(Port, term_to_binary(Request)),
    case recv_reply(Port, Id) of
        {reply, Id, error, ErrorMap} -> ErrorMap;
        Other -> throw({unexpected_reply, Request, Other})
    end.

%% Skips events; returns the reply to Id.
recv_reply(Port, Id) ->
    case recv(Port) of
        {reply, Id, _, _} = Reply -> Reply;
        {event, _, _, _} -> recv_reply(Port, Id);
        Other -> throw({unexpected_frame, Other})
    end.

recv(Port) ->
    receive
        {Port, {data, Data}} -> binary_to_term(Data);
        {Port, {exit_status, Status}} -> throw({worker_exited, Status})
    after 10000 -> throw(timeout)
    end.

step(Name, Value) ->
    io:format("~s: ~p~n", [Name, Value]).
