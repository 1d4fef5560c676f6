# tests/replay/tests.cmake — command-line tests of memfit-replay (ctest -R replay):
# the bundled traces replay with consistent peaks, bad traces and OOMs exit with
# their documented status and name the line, baselines report a speed ratio.
# Each test runs check_replay.py, which asserts the exit status and the output.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "memfit: python3 not found, the memfit-replay tests are not added")
  return()
endif()

set(REPLAY_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(REPLAY_TRACE_DIR ${PROJECT_SOURCE_DIR}/benchmarks/traces)
set(REPLAY_CHECK ${Python3_EXECUTABLE} ${REPLAY_TEST_DIR}/check_replay.py)
set(REPLAY $<TARGET_FILE:memfit-replay>)

# replay_test(NAME CHECKS... -- ARGS...): one ctest entry, "replay." + NAME.
function(replay_test name)
  add_test(NAME replay.${name} COMMAND ${REPLAY_CHECK} ${ARGN})
  set_tests_properties(replay.${name} PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS replay)
endfunction()

# --- the bundled traces: exit 0, one JSON object, reserved >= allocated >= requested
foreach(trace gpt_varlen gpt_fixed resnet_2stream)
  replay_test(trace.${trace} --json --invariants
              -- ${REPLAY} ${REPLAY_TRACE_DIR}/${trace}.mftrace --json --repeat 1)
endforeach()
# mf_check after every event, on a trace with two streams (22k events)
replay_test(check_every_event.resnet_2stream --json --invariants --field "check=\"every_event\""
            -- ${REPLAY} ${REPLAY_TRACE_DIR}/resnet_2stream.mftrace --json --repeat 1 --check)

# --- the small hand-written trace: every feature of the format
replay_test(small.json --json --invariants --field peak_requested_bytes=72878080
            --field events=15 --field max_live=5 --has peak_bytes_by_category
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --json --repeat 2 --check)
replay_test(small.table --stdout "peak requested +69\\.50 MiB" --stdout "fragmentation +[0-9.]+"
            --stdout "peak activation" --stdout "time per event +[0-9.]+ ns"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --repeat 1)
replay_test(small.stdin --stdin ${REPLAY_TEST_DIR}/small.mftrace --stdout "^memfit-replay <stdin>"
            -- ${REPLAY} - --repeat 1)
replay_test(small.host_backend --json --invariants --field "backend=\"host\""
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --backend host --json --repeat 1)

# --- an event-log trace with "dev=3" annotations: the allocator gets 4 devices;
# with only 2 the alloc fails for a reason that is not an OOM: exit 1
replay_test(devices.from_annotations --json --invariants --field devices=4
            --stdout "\"conf\": \"backend:virtual,devices:4\""
            -- ${REPLAY} ${REPLAY_TEST_DIR}/device3.mftrace --json --repeat 1)
replay_test(devices.too_few --exit 1 --stderr "device3\\.mftrace:2: alloc of 4096 bytes on device 3 failed"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/device3.mftrace --repeat 1 --conf devices:2)

# --- bad traces: exit 2, and stderr names the file and the line
replay_test(bad.malformed --exit 2 --stderr "bad_malformed\\.mftrace:4: malformed alloc"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_malformed.mftrace)
replay_test(bad.unknown_free --exit 2 --stderr "bad_unknown_free\\.mftrace:4: free of unknown id 'b'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_unknown_free.mftrace)
replay_test(bad.double_free --exit 2
            --stderr "bad_double_free\\.mftrace:4: double free of id 'a' \\(already freed at line 3\\)"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_double_free.mftrace)
replay_test(bad.live_alloc --exit 2
            --stderr "bad_live_alloc\\.mftrace:4: alloc of id 'a', which is already live \\(allocated at line 2\\)"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_live_alloc.mftrace)
replay_test(bad.event --exit 2 --stderr "bad_event\\.mftrace:3: malformed line: unknown event 'realloc'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_event.mftrace)
replay_test(bad.size --exit 2 --stderr "bad_size\\.mftrace:2: bad size '-100'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_size.mftrace)
replay_test(bad.missing_file --exit 2 --stderr "no_such\\.mftrace: cannot open"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/no_such.mftrace)

# --- usage errors: exit 2 with the usage text
replay_test(usage.no_trace --exit 2 --stderr "no trace given" --stderr "^usage: memfit-replay"
            -- ${REPLAY})
replay_test(usage.unknown_option --exit 2 --stderr "unknown option '--bogus'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --bogus)
replay_test(usage.repeat --exit 2 --stderr "--repeat wants an integer"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --repeat 0)
replay_test(usage.backend --exit 2 --stderr "unknown backend 'gpu'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --backend gpu)
replay_test(usage.baseline --exit 2 --stderr "unknown baseline 'tcmalloc'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --baseline tcmalloc)
replay_test(usage.capacity --exit 2 --stderr "bad --capacity 'lots'"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --capacity lots)
replay_test(usage.conf --exit 2 --stderr "cannot create the allocator"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --conf no_such_option:1)
replay_test(usage.help --stdout "^usage: memfit-replay" --stdout "Exit status" -- ${REPLAY} --help)

# --- OOM: exit 3, the line of the failing alloc and memfit's OOM report
replay_test(oom --exit 3 --stderr "oom\\.mftrace:5: out of memory" --stderr "capacity"
            --stderr "allocated by category"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/oom.mftrace --capacity 8MiB)
replay_test(oom.fits --json --invariants
            -- ${REPLAY} ${REPLAY_TEST_DIR}/oom.mftrace --capacity 12MiB --json --repeat 1)

# --- baselines: side by side, with the ratio; malloc must be glibc's (the
# sanitizers replace malloc, and make big traces slow: small trace there)
if(MEMFIT_SANITIZE)
  set(replay_libc "libasan|libc")
  set(replay_baseline_trace ${REPLAY_TEST_DIR}/small.mftrace)
else()
  set(replay_libc "libc")
  set(replay_baseline_trace ${REPLAY_TRACE_DIR}/resnet_2stream.mftrace)
endif()
replay_test(baseline.malloc --json --has speed_ratio --has baseline_ns_per_op
            --field "baseline=\"malloc\"" --stdout "\"baseline_library\": \"[^\"]*(${replay_libc})\\.so"
            -- ${REPLAY} ${replay_baseline_trace} --json --repeat 1 --baseline malloc)
replay_test(baseline.malloc_table --stdout "speed ratio +[0-9.]+"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --repeat 1 --baseline malloc)
replay_test(baseline.jemalloc --skip-if-stderr "cannot load libjemalloc" --json --has speed_ratio
            --field "baseline=\"jemalloc\"" --stdout "\"baseline_library\": \"[^\"]*libjemalloc"
            -- ${REPLAY} ${replay_baseline_trace} --json --repeat 1 --baseline jemalloc)
replay_test(no_jemalloc_linked --ldd-lacks jemalloc -- ${REPLAY} --help)

# --- the library's event log is itself a trace: replaying it gives the same peak
replay_test(event_log.write
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --repeat 1
               --conf event_log:${CMAKE_CURRENT_BINARY_DIR}/replay_small_events.log)
set_tests_properties(replay.event_log.write PROPERTIES FIXTURES_SETUP replay_event_log)
replay_test(event_log.replay --json --invariants --field peak_requested_bytes=72878080
            --has peak_bytes_by_category
            -- ${REPLAY} ${CMAKE_CURRENT_BINARY_DIR}/replay_small_events.log --json --repeat 1)
set_tests_properties(replay.event_log.replay PROPERTIES FIXTURES_REQUIRED replay_event_log)
