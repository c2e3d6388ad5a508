/*
 * The intrusive list (common/lb_list.h): order, removal from anywhere,
 * double removal, iteration that frees as it goes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "lb_list.h"

struct item {
    int v;
    struct lb_list link;
};

static int values(struct lb_list *head, int *out, int max)
{
    struct lb_list *pos;
    int n = 0;

    lb_list_for_each(pos, head) if (n < max) out[n++] = lb_list_entry(pos, struct item, link)->v;
    return n;
}

static void test_order_and_removal(void **state)
{
    struct lb_list head;
    struct item it[4] = {{.v = 0}, {.v = 1}, {.v = 2}, {.v = 3}};
    int got[8];

    lb_list_init(&head);
    assert_true(lb_list_is_empty(&head));
    assert_null(lb_list_first(&head));
    lb_list_insert_tail(&head, &it[1].link);
    lb_list_insert_tail(&head, &it[2].link);
    lb_list_insert_head(&head, &it[0].link);
    lb_list_insert_tail(&head, &it[3].link);
    assert_int_equal(values(&head, got, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], i);
    assert_ptr_equal(lb_list_first(&head), &it[0].link);
    assert_ptr_equal(lb_list_last(&head), &it[3].link);
    assert_ptr_equal(lb_list_next(&head, &it[1].link), &it[2].link);
    assert_null(lb_list_next(&head, &it[3].link));
    assert_null(lb_list_prev(&head, &it[0].link));
    lb_list_remove(&it[2].link);
    assert_false(lb_list_is_linked(&it[2].link));
    lb_list_remove(&it[2].link); /* twice: harmless */
    lb_list_remove(&it[0].link);
    assert_int_equal(values(&head, got, 8), 2);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 3);
}

static void test_iteration_that_frees(void **state)
{
    struct lb_list head, *pos, *tmp;
    int n = 0;

    lb_list_init(&head);
    for (int i = 0; i < 100; i++) {
        struct item *it = calloc(1, sizeof(*it));

        assert_non_null(it);
        it->v = i;
        lb_list_insert_tail(&head, &it->link);
    }
    lb_list_for_each_safe(pos, tmp, &head)
    {
        struct item *it = lb_list_entry(pos, struct item, link);

        assert_int_equal(it->v, n++);
        lb_list_remove(pos);
        free(it); /* ASan would see a use after free if the walk touched it */
    }
    assert_int_equal(n, 100);
    assert_true(lb_list_is_empty(&head));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_removal),
        cmocka_unit_test(test_iteration_that_frees),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
