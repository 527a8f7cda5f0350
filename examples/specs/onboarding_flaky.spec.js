// AppWright spec: onboarding_flaky
const { test, expect } = require("appwright");

test("onboarding_flaky", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
