# tests/replay/tests.cmake — command-line tests of memfit-replay (ctest -R replay):
# the bundled traces replay with consistent peaks, bad traces and OOMs exit with
# their documented status and name the line, baselines report a speed ratio,
# --compare native reports the peaks of PyTorch's allocator emulated.
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
replay_test(bad.size_2e63 --exit 2 --stderr "bad_size_2e63\\.mftrace:2: size '9223372036854775808' is larger than any allocation"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_size_2e63.mftrace)
replay_test(bad.size_nul --exit 2 --stderr "bad_size_nul\\.mftrace:2: bad size: a NUL byte"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/bad_size_nul.mftrace)
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

# --- --compare native: PyTorch's caching allocator emulated on the same trace.
# Every bundled trace: exit 0, memfit's figures as without it, both emulations'
# figures present and consistent (reserved >= allocated >= requested, ratios).
file(GLOB replay_bundled_traces CONFIGURE_DEPENDS ${REPLAY_TRACE_DIR}/*.mftrace)
foreach(path ${replay_bundled_traces})
  get_filename_component(trace ${path} NAME_WE)
  replay_test(native.${trace} --json --invariants --native --field native_ooms=0
              --field native_expandable_ooms=0 --field "compare=\"native\""
              --has native_segment_maps --has native_expandable_fragmentation
              -- ${REPLAY} ${path} --json --repeat 1 --compare native)
endforeach()
# Hand-written traces whose peaks follow from the policy (each file says how).
# native_replay_test(NAME RESERVED EXPANDABLE_RESERVED CHECKS... -- ARGS...)
function(native_replay_test name reserved expandable)
  replay_test(native.${name} --json --native --field native_peak_reserved_bytes=${reserved}
              --field native_expandable_peak_reserved_bytes=${expandable} ${ARGN})
endfunction()
set(NATIVE_ARGS --json --repeat 1 --compare native)
native_replay_test(small 2097152 2097152 --field native_peak_allocated_bytes=1024
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_small.mftrace ${NATIVE_ARGS})
native_replay_test(medium 20971520 20971520 --field native_peak_allocated_bytes=5242880
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_medium.mftrace ${NATIVE_ARGS})
native_replay_test(large 14680064 20971520 --field native_peak_allocated_bytes=12583424
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_large.mftrace ${NATIVE_ARGS})
# a cached block too small for the next request: a second segment; the
# expandable segment serves both from its one page (it maps less)
native_replay_test(growth 29360128 20971520 --field native_segment_maps=2
                   --field native_expandable_segment_maps=1
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_growth.mftrace ${NATIVE_ARGS})
native_replay_test(split 20971520 20971520 --field native_peak_allocated_bytes=20971520
                   --field native_segment_maps=1
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_split.mftrace ${NATIVE_ARGS})
native_replay_test(streams 41943040 41943040
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_streams.mftrace ${NATIVE_ARGS})
# memory pressure: unlimited, a budget that release_cached_blocks meets, and
# one that the expandable emulation cannot meet (its OOM is a result: exit 0)
native_replay_test(release.unlimited 52428800 41943040 --field native_alloc_retries=0
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_release.mftrace ${NATIVE_ARGS})
native_replay_test(release.capacity 31457280 41943040 --field native_alloc_retries=1
                   --field native_segment_unmaps=1 --field native_ooms=0
                   --field native_capacity_bytes=41943040
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_release.mftrace ${NATIVE_ARGS} --capacity 40MiB)
native_replay_test(release.expandable_oom 31457280 20971520 --field native_ooms=0
                   --field native_expandable_ooms=1 --field native_expandable_oom_line=11
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_release.mftrace ${NATIVE_ARGS} --capacity 35MiB)
# the emulation runs out of memory where memfit does not: reported, exit 0
native_replay_test(oom 20971520 20971520 --invariants --field native_ooms=1 --field native_oom_line=12
                   --field native_expandable_ooms=1
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_oom.mftrace ${NATIVE_ARGS} --capacity 24MiB)
replay_test(native.oom_table --stdout "native ooms +1  \\(stopped at line 12: alloc of 8388608 bytes"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/native_oom.mftrace --repeat 1 --compare native --capacity 24MiB)
# memfit's own OOM decides the exit status, with or without the comparison
replay_test(native.memfit_oom --exit 3 --stderr "oom\\.mftrace:5: out of memory"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/oom.mftrace --capacity 8MiB --compare native)
# max_split_size from memfit's options applies to the emulation too
native_replay_test(max_split.unset 31457280 41943040 --field native_max_split_size_bytes=null
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_max_split.mftrace ${NATIVE_ARGS})
native_replay_test(max_split.set 52428800 41943040 --field native_max_split_size_bytes=20971520
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_max_split.mftrace ${NATIVE_ARGS}
                      --conf max_split_size:20MiB)
native_replay_test(oversize 94371840 104857600 --field native_segment_maps=3
                   --field native_segment_unmaps=1 --field native_alloc_retries=0
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/native_oversize.mftrace ${NATIVE_ARGS}
                      --conf max_split_size:20MiB --capacity 100MiB)
# the other tests' traces: zero-byte requests, two streams; devices emulated
# apart (2 MiB on device 3 + 2 MiB on device 0)
native_replay_test(small_trace 92274688 88080384 --field native_peak_allocated_bytes=72878080
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace ${NATIVE_ARGS})
native_replay_test(devices 4194304 4194304 --field devices=4
                   -- ${REPLAY} ${REPLAY_TEST_DIR}/device3.mftrace ${NATIVE_ARGS})
replay_test(native.table --stdout "native peak reserved +2\\.00 MiB  \\(2097152 B\\)"
            --stdout "expandable reserved +2\\.00 MiB" --stdout "reserved vs native +[0-9.]+"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/native_small.mftrace --repeat 1 --compare native)
# without --compare nothing is added; any other value is a usage error
replay_test(native.absent --json --lacks native_peak_reserved_bytes --lacks reserved_vs_native
            -- ${REPLAY} ${REPLAY_TEST_DIR}/native_small.mftrace --json --repeat 1)
replay_test(usage.compare --exit 2 --stderr "unknown comparison 'jemalloc' \\(expected native\\)"
            --stderr "^usage: memfit-replay"
            -- ${REPLAY} ${REPLAY_TEST_DIR}/small.mftrace --compare jemalloc)

# --- the ids live at the end are freed newest first (a C test of the parser)
add_executable(replay_live_order ${REPLAY_TEST_DIR}/test_live_order.c
               ${PROJECT_SOURCE_DIR}/benchmarks/replay/trace.c ${PROJECT_SOURCE_DIR}/benchmarks/replay/idmap.c)
target_include_directories(replay_live_order PRIVATE ${PROJECT_SOURCE_DIR}/benchmarks/replay)
target_compile_definitions(replay_live_order PRIVATE _GNU_SOURCE)
target_link_libraries(replay_live_order PRIVATE memfit)
add_test(NAME replay.live_ids_freed_newest_first
         COMMAND replay_live_order ${CMAKE_CURRENT_BINARY_DIR}/live_order.mftrace)
set_tests_properties(replay.live_ids_freed_newest_first PROPERTIES LABELS replay TIMEOUT 60)
