# tests/planner/tests.cmake — command-line tests of memfit-plan (ctest -R plan):
# the sample profile plans with each objective (figures checked against an
# independent brute force of PLAN.md's model), --json and -o write a valid plan,
# bad input exits 2 naming what was wrong, nothing fitting exits 3.
# Each test runs check_plan.py, which asserts the exit status and the output.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "memfit: python3 not found, the memfit-plan tests are not added")
  return()
endif()

set(PLAN_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(PLAN_SAMPLE ${PROJECT_SOURCE_DIR}/planner/examples/sample_profile.json)
set(PLAN_CHECK ${Python3_EXECUTABLE} ${PLAN_TEST_DIR}/check_plan.py)
set(PLAN_OUT ${CMAKE_CURRENT_BINARY_DIR}/planner)
file(MAKE_DIRECTORY ${PLAN_OUT})
set(PLAN $<TARGET_FILE:memfit-plan>)

# plan_test(NAME CHECKS... -- ARGS...): one ctest entry, "plan." + NAME.
function(plan_test name)
  add_test(NAME plan.${name} COMMAND ${PLAN_CHECK} ${ARGN})
  set_tests_properties(plan.${name} PROPERTIES TIMEOUT 120 LABELS planner)
endfunction()

# --- the sample profile (6 layers, fp32 + bf16, batches 2 and 4) at 16 GiB
# The sample was profiled with segments (no granule_bytes): reserved is modelled as
# max(allocated + overhead, allocated x the largest profiled ratio).
plan_test(sample.table --stdout "^memfit-plan .*sample_profile\\.json" --stdout "batch size +28$"
          --stdout "predicted peak +15\\.02 GiB allocated, 15\\.04 GiB reserved of 15\\.52 GiB usable"
          --stdout "reserve model +reserved = max\\(allocated \\+ 3\\.94 MiB, allocated x 1\\.0012\\)"
          --stdout "headroom 3\\.00%, as given" --stdout "at loss_backward: fixed"
          --stdout "of which recompute [0-9.]+ s \\([0-9.]+% overhead\\)"
          --stdout "model self-check +0\\.00% largest error of allocated peaks, 0\\.06% of reserved"
          --stdout "no checkpoint: batch 14 .*all checkpointed: batch 23 .*in fp32" --stdout "^  search +exact"
          --stdout "^  blocks\\.0 +yes +bf16"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03)
plan_test(sample.max_batch --json --field batch_size=28 --field predicted_step_seconds=1.7633
          --field objective=\"max-batch\" --field exact=true --field monotone=true --field grad_accumulation_steps=1
          --field baselines.no_checkpoint.batch_size=14 --field baselines.all_checkpoint.batch_size=23
          --field "lr_scale.value=7.0" --field "layers[5].name=\"head\"" --field model_error=0.0
          --field headroom_rule=\"option\" --field reserve_model.overhead_bytes=4126720
          --field reserve_model.granule_bytes=0
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03 --json)
# The default headroom: 25% for a profile from segments, 1% with pages, + the
# self-check's error (0 to four digits here)
plan_test(sample.auto_headroom --json --field headroom=0.25 --field headroom_rule=\"auto\"
          --field usable_bytes=12884901888
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --json)
plan_test(sample.auto_headroom_table --stdout "headroom 25\\.00%: 25% for segments"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB)
plan_test(sample.pages_auto_headroom --json --field headroom=0.01 --field headroom_rule=\"auto\" --field batch_size=29
          --field usable_bytes=17008070492
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/pages_auto.json --set granule_bytes=2097152
          -- ${PLAN} ${PLAN_OUT}/pages_auto.json --budget 16GiB --json)
# The same profile as if from page-mapped pools: reserved = allocated + the overhead
plan_test(sample.pages --json --field batch_size=29 --field "reserve_model.rule=\"allocated + overhead\""
          --field predicted_peak_bytes=16657411584 --field predicted_reserved_bytes=16661538304
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/pages.json --set granule_bytes=2097152
          -- ${PLAN} ${PLAN_OUT}/pages.json --budget 16GiB --headroom 0.03 --json)
plan_test(sample.throughput --json --field batch_size=17 --field objective=\"throughput\"
          --field predicted_recompute_seconds=0.0
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03 --objective throughput --json)
plan_test(sample.global_batch --json --field batch_size=16 --field grad_accumulation_steps=4 --field global_batch=64
          --field objective=\"global-batch\" --field lr_scale.value=16.0
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03 --objective global-batch=64 --json)
plan_test(sample.8gib --json --field batch_size=13 --field baselines.no_checkpoint.batch_size=6
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --json)
plan_test(sample.bf16_only --json --field "precisions=[\"bf16\"]" --field "layers[0].precision=\"bf16\""
          --field "baselines.no_checkpoint.precision=\"bf16\""
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --precisions bf16 --json)
plan_test(sample.max_batch_option --json --field batch_size=5 --field max_batch=5
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03 --max-batch 5 --json)
plan_test(sample.headroom --json --field headroom=0.5 --field usable_bytes=8589934592
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.5 --json)
plan_test(sample.stdin --stdin ${PLAN_SAMPLE} --stdout "^memfit-plan -$" -- ${PLAN} - --budget 16GiB)

# --- -o writes the plan JSON (with the table, or the same JSON on stdout)
plan_test(output.file --file ${PLAN_OUT}/plan.json --field batch_size=28 --stdout "batch size +28"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 16GiB --headroom 0.03 -o ${PLAN_OUT}/plan.json)
plan_test(output.file_and_json --json --file ${PLAN_OUT}/plan2.json --field batch_size=13
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --json -o ${PLAN_OUT}/plan2.json)
plan_test(output.unwritable --exit 1 --stderr "/no/such/dir/plan\\.json: cannot write"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 -o /no/such/dir/plan.json)

# --- nothing fits: exit 3, with what even the leanest simple plan needs
plan_test(nothing_fits --exit 3
          --stderr "nothing fits: even batch 1 with everything checkpointed in the cheapest precision \\(fp32\\) needs [0-9.]+ GiB \\([0-9]+ bytes\\) allocated > the usable 1\\.94 GiB"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 2GiB --headroom 0.03)

# --- bad profiles: exit 2, and stderr names the file and the JSON path
plan_test(bad.missing_field --exit 2
          --stderr "bad_missing\\.json: settings\\[1\\]\\.layers\\[2\\]\\.forward\\.peak: missing"
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/bad_missing.json --delete "settings[1].layers[2].forward.peak"
          -- ${PLAN} ${PLAN_OUT}/bad_missing.json --budget 8GiB)
plan_test(bad.mistyped --exit 2
          --stderr "settings\\[0\\]\\.batch_size: expected an integer, got a string"
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/bad_mistyped.json --set "settings[0].batch_size=\"2\""
          -- ${PLAN} ${PLAN_OUT}/bad_mistyped.json --budget 8GiB)
plan_test(bad.layers_differ --exit 2
          --stderr "settings\\[3\\]\\.layers\\[4\\]\\.name: \"blocks\\.9\", but settings\\[0\\]\\.layers\\[4\\] is \"blocks\\.3\""
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/bad_layers.json --set "settings[3].layers[4].name=\"blocks.9\""
          -- ${PLAN} ${PLAN_OUT}/bad_layers.json --budget 8GiB)
plan_test(bad.one_batch_size --exit 2 --stderr "settings: every bf16 setting has batch size 4"
          --derive ${PLAN_SAMPLE} ${PLAN_OUT}/bad_one_batch.json --delete "settings[2]"
          -- ${PLAN} ${PLAN_OUT}/bad_one_batch.json --budget 8GiB)
plan_test(bad.syntax --exit 2 --stderr "bad_syntax\\.json: profile: not valid JSON at line 3"
          -- ${PLAN} ${PLAN_TEST_DIR}/bad_syntax.json --budget 8GiB)
plan_test(bad.missing_file --exit 2 --stderr "no_such\\.json: cannot open"
          -- ${PLAN} ${PLAN_TEST_DIR}/no_such.json --budget 8GiB)
plan_test(bad.precision_not_profiled --exit 2 --stderr "precisions: fp16 is not in the profile \\(it has fp32, bf16\\)"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --precisions fp16)

# --- usage errors: exit 2 with the usage text
plan_test(usage.no_profile --exit 2 --stderr "no profile given" --stderr "^usage: memfit-plan" -- ${PLAN} --budget 8GiB)
plan_test(usage.no_budget --exit 2 --stderr "no --budget given" -- ${PLAN} ${PLAN_SAMPLE})
plan_test(usage.bad_budget --exit 2 --stderr "bad --budget: bad size '8XB': unknown unit" -- ${PLAN} ${PLAN_SAMPLE} --budget 8XB --headroom 0.03)
plan_test(usage.unknown_option --exit 2 --stderr "unknown option '--bogus'" -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --bogus)
plan_test(usage.objective --exit 2 --stderr "unknown objective 'fastest'"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --objective fastest)
plan_test(usage.global_batch --exit 2 --stderr "global-batch=N wants a positive integer N"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --objective global-batch=0)
plan_test(usage.precision --exit 2 --stderr "unknown precision 'fp64'"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --precisions fp32,fp64)
plan_test(usage.max_batch --exit 2 --stderr "--max-batch wants a positive integer"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03 --max-batch many)
# (no brackets in the regex: they group CMake list items)
plan_test(usage.headroom --exit 2 --stderr "--headroom wants a fraction in .0, 1. or auto,"
          -- ${PLAN} ${PLAN_SAMPLE} --budget 8GiB --headroom 1.5)
plan_test(usage.two_profiles --exit 2 --stderr "more than one profile"
          -- ${PLAN} ${PLAN_SAMPLE} ${PLAN_SAMPLE} --budget 8GiB --headroom 0.03)
plan_test(usage.help --stdout "^usage: memfit-plan" --stdout "Exit status" -- ${PLAN} --help)
